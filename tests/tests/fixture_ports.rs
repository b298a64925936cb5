//! The fixtures' loopback ports: a port handed out once is not handed out
//! again in the same process, and a server that finds its port taken is
//! started again on another one.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use offstate_testing::node::{Node, Readiness};
use offstate_testing::{find_program, free_port};

#[test]
fn a_port_is_handed_out_once() {
    let ports: BTreeSet<u16> = (0..200).map(|_| free_port().expect("port")).collect();
    assert_eq!(ports.len(), 200);
}

#[tokio::test]
async fn a_server_whose_port_is_taken_starts_again_elsewhere() {
    let program = find_program(
        "memcached",
        offstate_testing::memcached::MEMCACHED_ENV,
        &[PathBuf::from("/usr/bin/memcached")],
    )
    .expect("memcached is installed (scripts/setup.sh)");
    // Someone else holds the first port offered.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("address").port();
    let offered = Mutex::new(vec![free_port().expect("port"), taken]);
    let args = |port: u16| {
        let mut args = vec!["-l".to_owned(), "127.0.0.1".to_owned()];
        args.extend(["-p".to_owned(), port.to_string(), "-U".into(), "0".into()]);
        args.extend(["-u".to_owned(), "root".to_owned()]);
        args
    };
    let port = || Ok(offered.lock().unwrap().pop().expect("a third port"));
    let readiness = Readiness {
        hello: b"version\r\n",
        within: Duration::from_secs(10),
    };
    let node = Node::spawn("memcached", program, args, port, readiness)
        .await
        .expect("started on the second port");
    assert_ne!(node.address(), format!("127.0.0.1:{taken}"));
    assert!(offered.lock().unwrap().is_empty());
}
