//! Which Docker image each backend's container runs: the official images
//! by default, or whatever `OFFSTATE_REDIS_IMAGE`, `OFFSTATE_MEMCACHED_IMAGE`
//! or `OFFSTATE_DYNAMODB_IMAGE` names (such as the local images
//! `scripts/build-images.sh` makes on machines without a registry).
//!
//! Every image is run with the server's arguments only (they start with
//! `-`), which the official images' entrypoints pass to the server and the
//! local images' entrypoint (the server itself) takes as they are.

/// Chooses the Redis image.
pub const REDIS_IMAGE_ENV: &str = "OFFSTATE_REDIS_IMAGE";
/// Chooses the memcached image.
pub const MEMCACHED_IMAGE_ENV: &str = "OFFSTATE_MEMCACHED_IMAGE";
/// Chooses the DynamoDB emulator image.
pub const DYNAMODB_IMAGE_ENV: &str = "OFFSTATE_DYNAMODB_IMAGE";

/// The official Redis image.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7";
/// The official memcached image.
pub const DEFAULT_MEMCACHED_IMAGE: &str = "memcached:1.6";
/// moto's official image (its server listens on port 5000).
pub const DEFAULT_DYNAMODB_IMAGE: &str = "motoserver/moto:latest";

/// An image reference and the variable that chose (or can choose) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    name: String,
    var: &'static str,
}

impl Image {
    /// The image named by `var`, or `default` when it is unset or empty.
    #[must_use]
    pub fn from_env(var: &'static str, default: &str) -> Self {
        let name = std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_owned());
        Self { name, var }
    }

    /// The image reference (`name:tag`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The variable that chooses it.
    #[must_use]
    pub fn var(&self) -> &'static str {
        self.var
    }

    /// The repository and the tag (`latest` when none is given); a colon
    /// before the last `/` belongs to a registry's port, not a tag.
    #[must_use]
    pub fn name_and_tag(&self) -> (&str, &str) {
        match self.name.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (&self.name, "latest"),
        }
    }
}

/// The Redis image (`OFFSTATE_REDIS_IMAGE`, default `redis:7`).
#[must_use]
pub fn redis() -> Image {
    Image::from_env(REDIS_IMAGE_ENV, DEFAULT_REDIS_IMAGE)
}

/// The memcached image (`OFFSTATE_MEMCACHED_IMAGE`, default
/// `memcached:1.6`).
#[must_use]
pub fn memcached() -> Image {
    Image::from_env(MEMCACHED_IMAGE_ENV, DEFAULT_MEMCACHED_IMAGE)
}

/// The DynamoDB emulator image (`OFFSTATE_DYNAMODB_IMAGE`, default
/// `motoserver/moto:latest`). It must serve the DynamoDB API on port 5000
/// with its default command, as moto's image does.
#[must_use]
pub fn dynamodb() -> Image {
    Image::from_env(DYNAMODB_IMAGE_ENV, DEFAULT_DYNAMODB_IMAGE)
}

#[cfg(test)]
mod tests {
    use super::Image;

    #[test]
    fn a_reference_splits_into_repository_and_tag() {
        let image = |name: &str| Image {
            name: name.to_owned(),
            var: "X",
        };
        assert_eq!(image("redis:7").name_and_tag(), ("redis", "7"));
        assert_eq!(
            image("offstate-local/redis:7").name_and_tag(),
            ("offstate-local/redis", "7")
        );
        assert_eq!(
            image("localhost:5000/moto").name_and_tag(),
            ("localhost:5000/moto", "latest")
        );
    }
}
