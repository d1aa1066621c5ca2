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
use support::workloads::bound_pods;
use support::world::World;

const HOURS_PER_MONTH: f64 = 730.5;

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
        // Not read, so absent rather than zero.
        assert_eq!(side["cpu_cores"], Value::Null);
        assert_eq!(side["memory_bytes"], Value::Null);
    }
    assert_eq!(c["verdict"], "target_worse", "{c:#}");
    assert_eq!(c["worse"], "arm64");
    assert_eq!(
        c["summary"],
        "arm64 worse: pods on arm64 restart 12.00 times per pod-hour, while on amd64 (0.00)"
    );
    assert!(c["usage"].as_str().unwrap().starts_with("absent"));

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
    let crashy_line = compared
        .lines()
        .find(|l| l.contains("Deployment/crashy"))
        .unwrap();
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
