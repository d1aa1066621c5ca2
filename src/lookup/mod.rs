//! What images publish: references read as the kubelet reads them
//! (`image`), the registry client and its network guard (`registry`), and
//! the cache in front of it (`cache`), and the leader that followers ask
//! before the registry (`peer`).

pub mod cache;
pub mod image;
pub mod peer;
pub mod registry;
