//! Plain testcontainers against this machine's Docker daemon: start the
//! Redis image, reach it on its mapped port, pause and unpause it, remove
//! it. Guards the testcontainers pin (see tests/Cargo.toml): a bollard that
//! sends an API version newer than the daemon's fails here first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use offstate_redis::redis::{self, AsyncCommands as _};
use testcontainers::core::{IntoContainerPort as _, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{GenericImage, ImageExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testcontainers_starts_pauses_and_removes_a_redis_container() {
    let image = offstate_testing::images::redis();
    let (name, tag) = image.name().rsplit_once(':').expect("name:tag");
    let container = GenericImage::new(name, tag)
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(["--protected-mode", "no", "--save", ""])
        .start()
        .await
        .expect("start");
    let port = container.get_host_port_ipv4(6379).await.expect("port");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    container.pause().await.expect("pause");
    container.unpause().await.expect("unpause");
    let _: () = conn.set("k", "v").await.expect("SET after unpause");
    let id = container.id().to_owned();
    container.rm().await.expect("rm");
    let docker = testcontainers::core::client::docker_client_instance()
        .await
        .unwrap();
    assert!(
        docker.inspect_container(&id, None).await.is_err(),
        "{id} is still there"
    );
}
