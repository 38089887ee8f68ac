//! The host nodes on every store (real ZooKeeper 3.8, real etcd, the in-memory store): who
//! owns which field of `/hosts/{hostId}` (the agent, schedulers, operators) while they write
//! at the same time, and the instance status nodes. No Docker needed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use caas_backends::NodeError;
use caas_backends::assignment::Assignment;
use caas_backends::store::{Op, Store, StoreError};
use caas_backends::store_suite;
use caas_backends::testing::stores::{EtcdFixture, MemFixture, StoreFixture, ZkFixture};
use caas_backends::zk::hosts::{
    AgentHostFields, InstanceState, InstanceStatus, Published, host_path,
};
use caas_backends::zk::{HostInfo, HostStore, Resources};
use caas_core::{AppId, InstanceId, Version};

async fn host_store<F: StoreFixture>(f: &F) -> HostStore<F::Store> {
    HostStore::new(f.connect().await.unwrap())
}

/// Reads the host node, changes it with `edit`, writes it under the version read; again
/// when another writer got in between.
async fn read_modify_write<S: Store>(
    store: &HostStore<S>,
    host: &str,
    edit: impl Fn(&mut HostInfo),
) {
    let path = host_path(host);
    loop {
        let node = store.store().get(&path).await.unwrap().unwrap();
        let mut info: HostInfo = serde_json::from_slice(&node.data).unwrap();
        edit(&mut info);
        let op = Op::Set {
            path: path.clone(),
            data: serde_json::to_vec(&info).unwrap(),
            version: Some(node.version),
        };
        match store.store().commit(vec![op]).await {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

fn assignment(json: &str) -> Assignment {
    Assignment::from_json(json.as_bytes()).unwrap()
}

fn fields(cpu_idle: Option<f64>) -> AgentHostFields {
    AgentHostFields {
        ip: "127.0.0.2".parse().unwrap(),
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        capacity: Resources {
            memory: 16 << 30,
            cpu_shares: 4096,
            instances: 299,
        },
        cpu_idle,
        logs: None,
    }
}

/// What a scheduler does to `allocated`: read, add one instance, write under the version
/// read, retry on a conflict.
async fn schedule_one<S: Store>(store: &HostStore<S>, host: &str) {
    read_modify_write(store, host, |info| {
        info.allocated.instances += 1;
        info.allocated.memory += 1 << 20;
    })
    .await;
}

/// What an operator does to `draining`, the same way.
async fn drain<S: Store>(store: &HostStore<S>, host: &str) {
    read_modify_write(store, host, |info| info.draining = true).await;
}

async fn concurrent_schedulers_and_operators_keep_their_fields<F: StoreFixture>(f: F) {
    let agent = host_store(&f).await;
    let host = "h1";
    // Assignments written before the host node exists (as `caasd deploy --host` can).
    let plain = assignment(
        r#"{"app": "hello", "version": "v1", "image": "127.0.0.1:5000/hello:v1",
            "container_port": 8080, "memory": "512m", "cpu_shares": 1024}"#,
    );
    let pod = assignment(
        r#"{"app": "hello", "version": "v1", "image": "127.0.0.1:5000/hello:v1",
            "container_port": 8080, "memory": "512m", "cpu_shares": 1024,
            "sidecars": [{"name": "cache", "image": "127.0.0.1:5000/hello-cache:v1",
                          "memory": "64m", "cpu_shares": 256}]}"#,
    );
    let i = |s: &str| InstanceId::new(s).unwrap();
    agent.put_assignment(host, &i("i0"), &plain).await.unwrap();
    agent.put_assignment(host, &i("i1"), &pod).await.unwrap();

    // The agent creates the node: allocated from the assignments, not draining.
    assert_eq!(
        agent
            .publish_agent_fields(host, &fields(None))
            .await
            .unwrap(),
        Published::Created
    );
    let info = agent.info(host).await.unwrap().unwrap();
    assert_eq!(
        info.allocated,
        Resources {
            memory: (512 + 512 + 64) << 20,
            cpu_shares: 1024 + 1024 + 256,
            instances: 2,
        }
    );
    assert!(!info.draining);
    assert_eq!(
        agent
            .publish_agent_fields(host, &fields(None))
            .await
            .unwrap(),
        Published::Unchanged,
        "same fields: nothing written"
    );

    // Three writers at once, each on its own session: the agent publishing a new cpu_idle
    // 40 times, a scheduler adding 40 instances, an operator draining the host halfway.
    let sched = host_store(&f).await;
    let op = host_store(&f).await;
    let agent_task = {
        let agent = agent.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                let idle = Some(f64::from(n) / 100.0);
                let done = agent
                    .publish_agent_fields(host, &fields(idle))
                    .await
                    .unwrap();
                assert_eq!(done, Published::Updated);
            }
        })
    };
    let sched_task = tokio::spawn(async move {
        for n in 0..40 {
            schedule_one(&sched, host).await;
            if n == 20 {
                drain(&op, host).await;
            }
        }
    });
    agent_task.await.unwrap();
    sched_task.await.unwrap();

    let info = agent.info(host).await.unwrap().unwrap();
    assert_eq!(
        info.allocated.instances,
        2 + 40,
        "no scheduler write was lost"
    );
    assert_eq!(info.allocated.memory, ((512 + 512 + 64) << 20) + (40 << 20));
    assert!(info.draining, "the operator's drain survived the agent");
    assert_eq!(info.cpu_idle, Some(0.39), "the agent's last value is there");
    assert_eq!(info.labels["zone"], "a");
}

async fn empty_and_malformed_host_nodes<F: StoreFixture>(f: F) {
    let store = host_store(&f).await;
    // `ensure` makes /hosts/h1 as an empty parent: not a HostInfo yet.
    store.ensure("h1").await.unwrap();
    assert!(store.info("h1").await.unwrap().is_none());
    assert_eq!(
        store
            .publish_agent_fields("h1", &fields(Some(0.5)))
            .await
            .unwrap(),
        Published::Created
    );
    let info = store.info("h1").await.unwrap().unwrap();
    assert_eq!(
        (info.allocated, info.cpu_idle),
        (Resources::default(), Some(0.5))
    );

    // Garbage in the node: a clear error naming it, and the node is left as it was.
    caas_backends::store::put(store.store(), &host_path("h1"), b"{not json")
        .await
        .unwrap();
    let e = store
        .publish_agent_fields("h1", &fields(Some(0.1)))
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::Bad { .. }), "{e}");
    assert!(e.to_string().contains("/hosts/h1"), "{e}");
    assert!(e.to_string().contains("left as it is"), "{e}");
    let node = store.store().get(&host_path("h1")).await.unwrap().unwrap();
    assert_eq!(node.data, b"{not json");
}

async fn status_nodes_are_written_read_listed_and_deleted<F: StoreFixture>(f: F) {
    let store = host_store(&f).await;
    let id = InstanceId::new("i1").unwrap();
    assert!(store.status("h1", &id).await.unwrap().is_none());
    assert!(store.status_names("h1").await.unwrap().is_empty());
    let mut status = InstanceStatus {
        app: AppId::new("hello").unwrap(),
        version: Version::new("v1").unwrap(),
        state: InstanceState::Starting,
        address: None,
        container: None,
        restarts: 0,
        started_at_ms: None,
        message: None,
    };
    store.put_status("h1", &id, &status).await.unwrap();
    status.state = InstanceState::Healthy;
    status.address = Some("127.0.0.2:25701".into());
    store.put_status("h1", &id, &status).await.unwrap();
    assert_eq!(store.status("h1", &id).await.unwrap(), Some(status));
    assert_eq!(store.status_names("h1").await.unwrap(), vec!["i1"]);
    let node = store
        .store()
        .get("/hosts/h1/status/i1")
        .await
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&node.data).unwrap();
    assert_eq!(json["state"], "healthy");
    assert_eq!(json["address"], "127.0.0.2:25701");
    store.delete_status("h1", "i1").await.unwrap();
    store.delete_status("h1", "i1").await.unwrap();
    assert!(store.status("h1", &id).await.unwrap().is_none());
}

store_suite!(
    zookeeper,
    ZkFixture::shared,
    [
        concurrent_schedulers_and_operators_keep_their_fields,
        empty_and_malformed_host_nodes,
        status_nodes_are_written_read_listed_and_deleted,
    ]
);
store_suite!(
    etcd,
    EtcdFixture::shared,
    [
        concurrent_schedulers_and_operators_keep_their_fields,
        empty_and_malformed_host_nodes,
        status_nodes_are_written_read_listed_and_deleted,
    ]
);
store_suite!(
    memory,
    MemFixture::new,
    [
        concurrent_schedulers_and_operators_keep_their_fields,
        empty_and_malformed_host_nodes,
        status_nodes_are_written_read_listed_and_deleted,
    ]
);
