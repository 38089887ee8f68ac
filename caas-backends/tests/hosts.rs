//! The host nodes against a real ZooKeeper 3.8: who owns which field of `/hosts/{hostId}`
//! (the agent, schedulers, operators) while they write at the same time, and the instance
//! status nodes. No Docker needed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use caas_backends::assignment::Assignment;
use caas_backends::testing::{ZkServer, ZkServerBuilder};
use caas_backends::zk::hosts::{
    AgentHostFields, InstanceState, InstanceStatus, Published, host_path,
};
use caas_backends::zk::{HostInfo, HostStore, Resources, ZkConfig, ZkError, ZkSession};
use caas_core::{AppId, InstanceId, Version};

async fn setup(test: &str) -> Option<(ZkServer, HostStore)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "caas_backends=info".into()),
        )
        .with_test_writer()
        .try_init();
    let zk = ZkServer::start_or_skip(ZkServerBuilder::default(), test)?;
    let session = ZkSession::connect(ZkConfig::new(zk.connect_string()))
        .await
        .unwrap();
    Some((zk, HostStore::new(session)))
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
/// read, retry on BadVersion.
async fn schedule_one(store: &HostStore, host: &str) {
    let client = store.session().client().unwrap();
    let path = host_path(host);
    loop {
        let (data, stat) = client.get_data(&path).await.unwrap();
        let mut info: HostInfo = serde_json::from_slice(&data).unwrap();
        info.allocated.instances += 1;
        info.allocated.memory += 1 << 20;
        let data = serde_json::to_vec(&info).unwrap();
        match client.set_data(&path, &data, Some(stat.version)).await {
            Ok(_) => return,
            Err(zookeeper_client::Error::BadVersion) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

/// What an operator does to `draining`, the same way.
async fn drain(store: &HostStore, host: &str) {
    let client = store.session().client().unwrap();
    let path = host_path(host);
    loop {
        let (data, stat) = client.get_data(&path).await.unwrap();
        let mut info: HostInfo = serde_json::from_slice(&data).unwrap();
        info.draining = true;
        let data = serde_json::to_vec(&info).unwrap();
        match client.set_data(&path, &data, Some(stat.version)).await {
            Ok(_) => return,
            Err(zookeeper_client::Error::BadVersion) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schedulers_and_operators_keep_their_fields() {
    let Some((_zk, agent)) = setup("hosts_concurrent").await else {
        return;
    };
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
    let sched = HostStore::new(
        ZkSession::connect(agent.session().config().clone())
            .await
            .unwrap(),
    );
    let op = HostStore::new(
        ZkSession::connect(agent.session().config().clone())
            .await
            .unwrap(),
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_malformed_host_nodes() {
    let Some((_zk, store)) = setup("hosts_bad_nodes").await else {
        return;
    };
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
    let client = store.session().client().unwrap();
    client
        .set_data(&host_path("h1"), b"{not json", None)
        .await
        .unwrap();
    let e = store
        .publish_agent_fields("h1", &fields(Some(0.1)))
        .await
        .unwrap_err();
    assert!(matches!(e, ZkError::BadData { .. }), "{e}");
    assert!(e.to_string().contains("/hosts/h1"), "{e}");
    assert!(e.to_string().contains("left as it is"), "{e}");
    assert_eq!(
        client.get_data(&host_path("h1")).await.unwrap().0,
        b"{not json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_nodes_are_written_read_listed_and_deleted() {
    let Some((_zk, store)) = setup("hosts_status").await else {
        return;
    };
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
    let (data, _) = store
        .session()
        .client()
        .unwrap()
        .get_data("/hosts/h1/status/i1")
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(json["state"], "healthy");
    assert_eq!(json["address"], "127.0.0.2:25701");
    store.delete_status("h1", "i1").await.unwrap();
    store.delete_status("h1", "i1").await.unwrap();
    assert!(store.status("h1", &id).await.unwrap().is_none());
}
