//! Issue 14, item 7: a lookup that fails because this process is out of
//! file descriptors is not remembered as the registry's failure. Its own
//! test binary: it lowers the process's descriptor limit.

use archway_testkit as support;

use std::time::Duration;

use archway::lookup::cache::{CacheSettings, Inspector};
use archway::lookup::registry::{Credential, InspectError, RegistryClient, RegistrySettings};
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

#[tokio::test]
async fn running_out_of_file_descriptors_is_not_cached_as_a_registry_failure() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        dir.path(),
        &ImageSpec::multi_arch().with_salt("local-errors"),
    );
    registry.push(&layout.dir, "app:v1", Format::Oci);
    let settings = RegistrySettings {
        insecure_hosts: vec![registry.host()],
        request_timeout: Duration::from_secs(5),
        ..RegistrySettings::default()
    };
    let inspector = Inspector::new(
        RegistryClient::new(settings).unwrap(),
        CacheSettings {
            // Long enough that a cached failure would still be there.
            failure_ttl: Duration::from_secs(300),
            ..CacheSettings::default()
        },
    );
    let reference = registry.image("app:v1").parse().unwrap();

    // Use up every descriptor the process may open.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let lowered = libc::rlimit {
        rlim_cur: 512.min(limit.rlim_cur),
        rlim_max: limit.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let mut hog = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hog.push(file);
    }
    let (starved, _) = inspector.inspect(&reference, &Credential::Anonymous).await;
    drop(hog);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let error = starved.expect_err("no descriptor for a socket");
    assert!(matches!(error, InspectError::Local { .. }), "{error:?}");
    assert_eq!(error.metric_label(), "local");

    let (found, _) = inspector.inspect(&reference, &Credential::Anonymous).await;
    let found = found.expect("the local failure was not remembered");
    assert_eq!(found.platforms.len(), 2);
}
