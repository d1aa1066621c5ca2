//! `archway audit` compares each workload's pods per architecture and
//! prices their requests, on the real control plane: two Deployments steered
//! half onto arm64 (an enforce namespace at rollout 50), container statuses
//! written by the test as a kubelet would (pods annotated
//! `archway.test/kubelet: manual`), then the report read back.

use archway_testkit as support;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::SignedDuration;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::ImageSpec;
use support::controlplane::{ControlPlane, KUBELET_MANUAL};
use support::metrics_api::MetricsApi;
use support::workloads::bound_pods;
use support::world::World;

const HOURS_PER_MONTH: f64 = 730.5;

/// The line a report gives where the cluster does not serve metrics.k8s.io.
const NOT_SERVED: &str = "metrics.k8s.io is not served: no CPU or memory";

/// A Deployment of `replicas` whose pods' statuses the test writes, each
/// container requesting `cpu` and `memory`.
fn deployment(ns: &str, name: &str, image: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 8,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {KUBELET_MANUAL: "manual"}},
                "spec": {"containers": [{"name": "main", "image": image,
                          "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
                         "terminationGracePeriodSeconds": 0},
            },
        },
    })
}

/// Writes the pod's status as the kubelet would: Running, Ready
/// `to_ready` after its creation, its container restarted `restarts`
/// times.
async fn write_status(client: &kube::Client, pod: &Pod, restarts: i32, to_ready: i64) {
    let ns = pod.metadata.namespace.as_deref().unwrap();
    let name = pod.metadata.name.as_deref().unwrap();
    let created = pod.metadata.creation_timestamp.as_ref().unwrap().0;
    let ready = (created + SignedDuration::from_secs(to_ready)).to_string();
    let image = pod.spec.as_ref().unwrap().containers[0].image.clone();
    let status = json!({"status": {
        "phase": "Running", "startTime": created.to_string(),
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ready}],
        "containerStatuses": [{
            "name": "main", "image": image, "imageID": "", "ready": true, "started": true,
            "restartCount": restarts, "state": {"running": {"startedAt": ready}},
            "lastState": if restarts > 0 {
                json!({"terminated": {"exitCode": 1, "reason": "Error",
                       "startedAt": created.to_string(), "finishedAt": ready}})
            } else {
                json!({})
            },
        }],
    }});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-6)
}

fn audit(plane: &ControlPlane, ns: &str, config: &str, format: &str) -> String {
    let out = plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", ns, "-o", format],
        config,
        &plane.kubeconfig_for("auditor", &["system:masters"]),
    );
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_compares_the_architectures_and_prices_the_requests() {
    let World {
        plane,
        registry,
        archway: _archway,
    } = World::builder(env!("CARGO_BIN_EXE_archway"))
        .kubelet()
        .image("multi:v1", ImageSpec::multi_arch().with_salt("compare"))
        .start();
    let client = plane.client().await;

    let ns = "compare";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let image = format!("{}/multi:v1", registry.host());
    plane.apply(&[
        deployment(ns, "crashy", &image, "250m", "256Mi"),
        deployment(ns, "steady", &image, "500m", "1Gi"),
    ]);
    // (cpu, GiB) requested per pod.
    let per_pod = [("crashy", 0.25, 0.25), ("steady", 0.5, 1.0)];
    // Per architecture: (cpu, GiB) requested over both Deployments.
    let mut requested: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    let mut counts = std::collections::BTreeMap::new();
    for (app, cpu, gib) in per_pod {
        let pods = bound_pods(&client, ns, app, 8).await;
        for (pod, arch) in &pods {
            // Restarts on arm64 for crashy; every pod ready 5 s (amd64) or
            // 9 s (arm64) after its creation.
            let restarts = if app == "crashy" && arch == "arm64" {
                3
            } else {
                0
            };
            let to_ready = if arch == "arm64" { 9 } else { 5 };
            write_status(&client, pod, restarts, to_ready).await;
            let r = requested.entry(arch.clone()).or_default();
            *r = (r.0 + cpu, r.1 + gib);
        }
        let arm = pods.iter().filter(|(_, a)| a == "arm64").count();
        assert!(
            (3..=5).contains(&arm),
            "rollout 50%: {arm} of 8 {app} pods on arm64"
        );
        counts.insert(app, (8 - arm, arm));
    }

    let priced = format!(
        "registry: {{insecure: [\"{}\"]}}\ncost:\n  currency: USD\n  prices:\n    amd64: {{vcpuHour: 0.05, gibHour: 0.007}}\n    arm64: {{vcpuHour: 0.04, gibHour: 0.005}}\n",
        registry.host()
    );
    let report: Value = serde_json::from_str(&audit(&plane, ns, &priced, "json")).unwrap();
    let workload = |name: &str| {
        report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {report:#}"))
            .clone()
    };

    // crashy: the restarts written on arm64, arm64 named worse.
    let crashy = workload("crashy");
    eprintln!(
        "{:#}\n{:#}",
        crashy["comparison"], report["cost"]["namespaces"][ns]
    );
    let c = &crashy["comparison"];
    let (amd, arm) = counts["crashy"];
    for (arch, pods, restarts, seconds) in [("amd64", amd, 0, 5.0), ("arm64", arm, 3 * arm, 9.0)] {
        let side = &c["sides"][arch];
        assert_eq!(side["pods"], pods, "{c:#}");
        assert_eq!(side["ready"], pods, "{c:#}");
        assert_eq!(side["restarts"], restarts, "{c:#}");
        assert_eq!(side["exec_format_errors"], 0, "{c:#}");
        // Young pods count a quarter of an hour each.
        assert!(
            close(
                &side["restarts_per_pod_hour"],
                restarts as f64 / (pods as f64 * 0.25)
            ),
            "{c:#}"
        );
        assert!(close(&side["seconds_to_ready"]["mean"], seconds), "{c:#}");
        assert!(close(&side["seconds_to_ready"]["p90"], seconds), "{c:#}");
        // metrics.k8s.io is not served here: absent rather than zero.
        assert_eq!(side["cpu_millicores"], Value::Null, "{c:#}");
        assert_eq!(side["memory_mib"], Value::Null, "{c:#}");
    }
    assert_eq!(c["verdict"], "target_worse", "{c:#}");
    assert_eq!(c["worse"], "arm64");
    assert_eq!(
        c["summary"],
        "arm64 worse: pods on arm64 restart 12.00 times per pod-hour, while on amd64 (0.00)"
    );
    assert_eq!((&c["cpu"], &c["memory"]), (&Value::Null, &Value::Null));
    assert_eq!(
        report["usage"],
        json!({"served": false, "pods": 0, "note": NOT_SERVED}),
    );

    // steady: nothing to tell the sides apart.
    let steady = workload("steady");
    let s = &steady["comparison"];
    assert_eq!(s["verdict"], "even", "{s:#}");
    assert_eq!(s["worse"], Value::Null);
    assert_eq!(s["summary"], "no difference");
    let (amd, arm) = counts["steady"];
    assert_eq!(
        (&s["sides"]["amd64"]["ready"], &s["sides"]["arm64"]["ready"]),
        (&json!(amd), &json!(arm))
    );

    // Cost: the Deployments' requests by the prices.
    let month = |arch: &str, (cpu, gib): (f64, f64)| {
        let (per_cpu, per_gib) = if arch == "amd64" {
            (0.05, 0.007)
        } else {
            (0.04, 0.005)
        };
        HOURS_PER_MONTH * (cpu * per_cpu + gib * per_gib)
    };
    let total = (
        requested.values().map(|r| r.0).sum::<f64>(),
        requested.values().map(|r| r.1).sum::<f64>(),
    );
    assert!(close(&json!(total.0), 8.0 * 0.25 + 8.0 * 0.5));
    let now = month("amd64", requested["amd64"]) + month("arm64", requested["arm64"]);
    for figures in [&report["cost"]["namespaces"][ns], &report["cost"]["total"]] {
        for (arch, (cpu, gib)) in &requested {
            assert!(
                close(&figures["requests"][arch]["cpu_cores"], *cpu),
                "{figures:#}"
            );
            assert!(
                close(&figures["requests"][arch]["memory_gib"], *gib),
                "{figures:#}"
            );
        }
        assert!(close(&figures["now"]["monthly"], now), "{figures:#}");
        assert!(
            close(
                &figures["all_on_baseline"]["monthly"],
                month("amd64", total)
            ),
            "{figures:#}"
        );
        // Both images publish arm64: everything can move.
        assert!(
            close(
                &figures["all_movable_on_target"]["monthly"],
                month("arm64", total)
            ),
            "{figures:#}"
        );
        assert_eq!(figures["now"]["missing"], Value::Null);
        assert_eq!(figures["blocked"], json!([]));
    }
    assert_eq!(report["cost"]["currency"], "USD");
    assert_eq!(report["cost"]["baseline"], "amd64");

    // Without an arm64 price: said so, never 0; the amd64 figure stands.
    let amd64_only = format!(
        "registry: {{insecure: [\"{}\"]}}\ncost:\n  prices:\n    amd64: {{vcpuHour: 0.05, gibHour: 0.007}}\n",
        registry.host()
    );
    let report: Value = serde_json::from_str(&audit(&plane, ns, &amd64_only, "json")).unwrap();
    let total_figures = &report["cost"]["total"];
    for figure in ["now", "all_movable_on_target"] {
        assert_eq!(total_figures[figure]["monthly"], Value::Null);
        assert_eq!(total_figures[figure]["missing"], "no price for arm64");
    }
    assert!(close(
        &total_figures["all_on_baseline"]["monthly"],
        month("amd64", total)
    ));

    // The table: the comparison after the other tables, then the cost.
    let table = audit(&plane, ns, &priced, "table");
    eprintln!("{table}");
    let compared = table
        .split("Architectures compared")
        .nth(1)
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        compared.starts_with(&format!(
            " (workloads with pods on two architectures; {NOT_SERVED}):"
        )),
        "{table}"
    );
    let crashy_line = compared
        .lines()
        .find(|l| l.contains("Deployment/crashy"))
        .unwrap();
    // No CPU or memory figure, and no verdict on them: dashes, not zeros.
    let cells: Vec<&str> = (crashy_line.split("  "))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells[cells.len() - 4..cells.len() - 1],
        ["- amd64, - arm64", "- amd64, - arm64", "-"],
        "{table}"
    );
    assert!(
        crashy_line.ends_with(
            "arm64 worse: pods on arm64 restart 12.00 times per pod-hour, while on amd64 (0.00)"
        ),
        "{table}"
    );
    let steady_line = compared
        .lines()
        .find(|l| l.contains("Deployment/steady"))
        .unwrap();
    assert!(steady_line.ends_with("no difference"), "{table}");
    let cost = compared.split("monthly cost").nth(1).unwrap();
    let total_line = cost.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert!(
        total_line.contains(&format!("{now:.2} USD")),
        "{total_line}\n{table}"
    );
}

/// Per (workload, architecture): the CPU (millicores) and memory (MiB) the
/// stand-in reports for each of its pods.
type Written = std::collections::BTreeMap<(&'static str, String), (Vec<f64>, Vec<f64>)>;

/// `amount` as the report writes it: at most one decimal, `m` or ` MiB`.
fn amount(value: f64, unit: &str) -> String {
    let text = format!("{value:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

/// Mean and nearest-rank p90 (the value at rank ceil(0.9 n) of the sorted
/// values), computed here apart from archway's.
fn mean_p90(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() * 9).div_ceil(10);
    (
        values.iter().sum::<f64>() / values.len() as f64,
        sorted[rank - 1],
    )
}

/// Issue 27: CPU and memory per pod from `metrics.k8s.io`, served by a
/// stand-in through the API server's aggregation layer (an APIService and
/// an ExternalName Service, as metrics-server registers itself). Before it
/// is registered the report says the API is not served and shows no
/// figure; once it is, each side's mean and p90 are what the stand-in
/// wrote, and the side whose pods use more is named. The HTML report is
/// then looked at as the migration dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_cpu_and_memory_through_the_aggregation_layer_and_names_the_heavier_side() {
    let World {
        plane,
        registry,
        archway: _archway,
    } = World::builder(env!("CARGO_BIN_EXE_archway"))
        .kubelet()
        .image("multi:v1", ImageSpec::multi_arch().with_salt("usage"))
        .start();
    let client = plane.client().await;
    let ns = "usage";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let image = format!("{}/multi:v1", registry.host());
    plane.apply(&[
        deployment(ns, "light", &image, "100m", "128Mi"),
        deployment(ns, "heavy", &image, "250m", "256Mi"),
    ]);
    let metrics = MetricsApi::start();
    // Per workload and architecture: the CPU (millicores) and memory (MiB)
    // the stand-in reports for each pod, the j-th pod of a side using
    // base + step × j. light: the same on both sides (even); heavy: arm64
    // pods use about 2.5× the CPU and a sixth more memory.
    let mut written: Written = Default::default();
    let mut on_arm = 0;
    for app in ["light", "heavy"] {
        let pods = bound_pods(&client, ns, app, 8).await;
        for (pod, arch) in &pods {
            write_status(&client, pod, 0, 5).await;
            let figures = written.entry((app, arch.clone())).or_default();
            let j = figures.0.len() as f64;
            let (cpu, mib) = match (app, arch.as_str()) {
                ("light", _) => (100.0 + 5.0 * j, 128.0 + 2.0 * j),
                (_, "arm64") => (520.0 + 10.0 * j, 300.0 + 4.0 * j),
                _ => (200.0 + 10.0 * j, 256.0 + 4.0 * j),
            };
            figures.0.push(cpu);
            figures.1.push(mib);
            // light as people write quantities, heavy as metrics-server
            // does (nanocores, KiB).
            let (cpu_text, memory_text) = match app {
                "light" => (format!("{cpu}m"), format!("{mib}Mi")),
                _ => (
                    format!("{}n", (cpu * 1e6) as u64),
                    format!("{}Ki", (mib * 1024.0) as u64),
                ),
            };
            let name = pod.metadata.name.as_deref().unwrap();
            metrics.set(ns, name, &cpu_text, &memory_text);
        }
        let arm = pods.iter().filter(|(_, a)| a == "arm64").count();
        assert!(
            (3..=5).contains(&arm),
            "rollout 50%: {arm} of 8 {app} pods on arm64"
        );
        on_arm += arm;
    }
    let config = format!(
        "registry: {{insecure: [\"{}\"]}}\ncost:\n  currency: USD\n  prices:\n    amd64: {{vcpuHour: 0.05, gibHour: 0.007}}\n    arm64: {{vcpuHour: 0.04, gibHour: 0.005}}\n",
        registry.host()
    );
    let workload = |report: &Value, name: &str| {
        (report["workloads"].as_array().unwrap().iter())
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {report:#}"))["comparison"]
            .clone()
    };

    // Not served yet: one line, and no figure anywhere.
    let report: Value = serde_json::from_str(&audit(&plane, ns, &config, "json")).unwrap();
    assert_eq!(
        report["usage"],
        json!({"served": false, "pods": 0, "note": NOT_SERVED})
    );
    for app in ["light", "heavy"] {
        let c = workload(&report, app);
        for arch in ["amd64", "arm64"] {
            assert_eq!(c["sides"][arch]["cpu_millicores"], Value::Null, "{c:#}");
            assert_eq!(c["sides"][arch]["memory_mib"], Value::Null, "{c:#}");
        }
        assert_eq!((&c["cpu"], &c["memory"]), (&Value::Null, &Value::Null));
    }
    assert!(metrics.pod_lists().is_empty());

    // Served through the aggregator.
    metrics.register(&plane);
    let asked_before = metrics.pod_lists().len();
    let started = std::time::Instant::now();
    let report: Value = serde_json::from_str(&audit(&plane, ns, &config, "json")).unwrap();
    eprintln!("audit with metrics.k8s.io: {:?}", started.elapsed());
    assert_eq!(
        report["usage"],
        json!({"served": true, "pods": 16,
               "note": "CPU and memory in use from metrics.k8s.io (16 pods measured)"})
    );
    // Read through the API server from the stand-in, namespace-scoped and
    // paged.
    let lists = metrics.pod_lists().split_off(asked_before);
    assert_eq!(
        lists,
        [format!(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?limit=500"
        )],
        "{lists:?}"
    );
    for ((app, arch), (cpu, mib)) in &written {
        let c = workload(&report, app);
        let side = &c["sides"][arch];
        for (field, values) in [("cpu_millicores", cpu), ("memory_mib", mib)] {
            let (mean, p90) = mean_p90(values);
            assert!(
                close(&side[field]["mean"], mean),
                "{app} {arch} {field}: {c:#}"
            );
            assert!(
                close(&side[field]["p90"], p90),
                "{app} {arch} {field}: {c:#}"
            );
            assert_eq!(side[field]["pods"], values.len(), "{c:#}");
        }
    }
    let light = workload(&report, "light");
    eprintln!("{light:#}");
    assert_eq!(light["cpu"]["verdict"], "even", "{light:#}");
    assert_eq!(light["memory"]["verdict"], "even", "{light:#}");
    let heavy = workload(&report, "heavy");
    eprintln!("{heavy:#}");
    for (resource, field, name, unit) in [("cpu", 0, "CPU", "m"), ("memory", 1, "memory", " MiB")] {
        let pick = |arch: &str| {
            let figures = &written[&("heavy", arch.to_string())];
            mean_p90(if field == 0 { &figures.0 } else { &figures.1 })
        };
        let ((arm_mean, arm_p90), (amd_mean, amd_p90)) = (pick("arm64"), pick("amd64"));
        let verdict = &heavy[resource];
        assert_eq!(verdict["verdict"], "target_worse", "{heavy:#}");
        assert_eq!(verdict["worse"], "arm64", "{heavy:#}");
        assert_eq!(
            verdict["why"],
            format!(
                "pods on arm64 use {:.0}% more {name} than on amd64 (mean {} against {}; p90 {} against {})",
                (arm_mean / amd_mean - 1.0) * 100.0,
                amount(arm_mean, unit),
                amount(amd_mean, unit),
                amount(arm_p90, unit),
                amount(amd_p90, unit),
            ),
            "{heavy:#}"
        );
    }
    // Restarts and readiness alike on both sides: the health verdict is
    // not moved by CPU.
    assert_eq!(heavy["verdict"], "even", "{heavy:#}");

    // The migration dashboard, in a browser.
    let html = plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", ns, "-o", "html"],
        &config,
        &plane.kubeconfig_for("auditor", &["system:masters"]),
    );
    let dom =
        support::browser::look_at_report(env!("CARGO_TARGET_TMPDIR"), "compare-usage", &html, 1400);
    let at = |text: &str| {
        dom.find(text)
            .unwrap_or_else(|| panic!("{text} not in the page:\n{dom}"))
    };
    let section = &dom[at("<section class=\"namespace\"><h3>usage")..];
    let section = &section[..section.find("</section>").unwrap()];
    let percent = (on_arm * 100 + 8) / 16;
    for text in [
        "<span class=\"mode\">enforce</span>".to_string(),
        "<h4>Rollout</h4><p class=\"big\">50%</p><p class=\"small\">set by hand (archway.dev/rollout)</p>"
            .to_string(),
        format!("<h4>Pods on arm64 now</h4><p class=\"big\">{on_arm} of 16 ({percent}%)</p>"),
        "<p class=\"big\">0 held, 0 blocked</p>".to_string(),
        "<td class=\"usage no\">CPU: arm64 worse: pods on arm64 use".to_string(),
        "<td class=\"usage \">CPU: no difference; memory: no difference</td>".to_string(),
    ] {
        assert!(section.contains(&text), "{text} not in\n{section}");
    }
    // Both Deployments' images publish arm64: moving everything saves the
    // price difference on all requests (8 × 0.1 + 8 × 0.25 vCPU, 8 × 0.125
    // + 8 × 0.25 GiB).
    let (cpu, gib) = (8.0 * 0.1 + 8.0 * 0.25, 8.0 * 0.125 + 8.0 * 0.25);
    let before = HOURS_PER_MONTH * (cpu * 0.05 + gib * 0.007);
    let after = HOURS_PER_MONTH * (cpu * 0.04 + gib * 0.005);
    let saving = format!(
        "<h4>Moving, a month</h4><p class=\"big saving\">saves {:.2} USD ({:.0}%)</p>",
        before - after,
        (before - after) / before * 100.0
    );
    assert!(section.contains(&saving), "{saving} not in\n{section}");
    let (heavy_amd, heavy_arm) = (
        mean_p90(&written[&("heavy", "amd64".to_string())].0),
        mean_p90(&written[&("heavy", "arm64".to_string())].0),
    );
    let heavy_cpu = format!(
        "<td class=\"cpu\">{}/{} amd64<br>{}/{} arm64</td>",
        amount(heavy_amd.0, "m"),
        amount(heavy_amd.1, "m"),
        amount(heavy_arm.0, "m"),
        amount(heavy_arm.1, "m"),
    );
    assert!(
        section.contains(&heavy_cpu),
        "{heavy_cpu} not in\n{section}"
    );
    at("<p class=\"usage-note\">CPU and memory in use from metrics.k8s.io (16 pods measured).</p>");

    // Registered, but its server gone (the APIService now names a port
    // nothing listens on): the API server answers 503, and the report says
    // so in one line, with no figure.
    let nowhere = support::controlplane::free_port();
    plane.kubectl(
        &[
            "patch",
            "apiservice",
            support::metrics_api::API_SERVICE,
            "--type=merge",
            "-p",
            &json!({"spec": {"service": {"port": nowhere}}}).to_string(),
        ],
        None,
    );
    support::controlplane::wait_for(
        "metrics.k8s.io to answer 503",
        std::time::Duration::from_secs(60),
        || {
            let out =
                plane.try_kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods"], None);
            out.err()
                .filter(|e| e.contains("ServiceUnavailable") || e.contains("503"))
        },
    );
    let started = std::time::Instant::now();
    let report: Value = serde_json::from_str(&audit(&plane, ns, &config, "json")).unwrap();
    let took = started.elapsed();
    eprintln!("audit with metrics.k8s.io answering 503: {took:?}");
    assert_eq!(
        report["usage"],
        json!({"served": false, "pods": 0,
               "note": "metrics.k8s.io is not served (its APIService is not available): no CPU or memory"})
    );
    // Said at once: not after kube's retries of 503, nor at the read's
    // 30 s bound.
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let heavy = workload(&report, "heavy");
    assert_eq!(
        heavy["sides"]["arm64"]["cpu_millicores"],
        Value::Null,
        "{heavy:#}"
    );
    assert_eq!(heavy["cpu"], Value::Null, "{heavy:#}");
}
