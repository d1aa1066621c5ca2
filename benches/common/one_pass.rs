//! The review read in one pass, pod included, as archway reads it
//! (src/admission/wire.rs): the decision bench times it in-process, and the
//! pod floor (benches/floor.rs) serves with it under load.

use std::borrow::Cow;

use archway::admission::pod::PodView;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read as archway reads them; not every reader uses each
pub struct OnePass<'a> {
    #[serde(borrow)]
    pub api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    pub request: Option<OnePassRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OnePassRequest {
    pub uid: Option<String>,
    pub kind: Option<Kind>,
    pub operation: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub_resource: Option<String>,
    pub dry_run: Option<bool>,
    pub object: Option<PodView>,
}

/// The request's group and kind.
#[derive(Deserialize)]
#[allow(dead_code)]
pub struct Kind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
}
