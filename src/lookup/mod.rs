//! What images publish: references read as the kubelet reads them
//! (`image`), the registry client and its network guard (`registry`), and
//! the cache in front of it (`cache`).

pub mod cache;
pub mod image;
pub mod registry;
