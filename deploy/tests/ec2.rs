//! The EC2 provider against moto's EC2 server on 127.0.0.1 (`scripts/test` installs it and sets
//! `TANDEM_MOTO_SERVER`): real `RunInstances`, `DescribeInstances` and `TerminateInstances`
//! requests through the SDK, answered by a real implementation of the EC2 API.
//!
//! moto does not honour `ClientToken` or `MaxCount`, changes instance states at once and never
//! runs user-data: the provider's unit tests cover those against a fake.
//!
//! The provider takes credentials only from the standard AWS chain, so the scenarios need dummy
//! credentials in their environment, and only they: the test runs them in a child process of
//! this test binary with that environment (and no AWS variable of the caller's), rather than
//! changing the environment of a running multi-threaded process.
#![cfg(feature = "aws")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{
    Filter, HttpTokensState, InstanceAttributeName, InstanceMetadataEndpointState, ResourceType, Tag, TagSpecification,
};
use deploy::provider::ec2::launch::{CLUSTER_TAG, LAUNCH_TOKEN_TAG, ROLE_TAG, VOTER_ID_TAG, find_access_key_id};
use deploy::provider::ec2::{Ec2Options, Ec2Provider};
use deploy::provider::{Provider, ProviderErrorKind};
use tempfile::TempDir;

const TEST_NAME: &str = "ec2_provider_against_moto";
/// Set in the child process that runs the scenarios.
const CHILD_ENV: &str = "TANDEM_EC2_TEST_CHILD";
/// The child's secret access key: as long as a real one, so the provider looks for it in every
/// user-data it renders.
const DUMMY_SECRET_ACCESS_KEY: &str = "tandem/dummy/secret/access/key/for/moto0";
const CLUSTER_SECRET: &str = "cluster-secret-0123456789abcdef";
const INSTANCE_PROFILE: &str = "tandem-worker-test";
const REGION: &str = "us-east-1";
/// Not the default (8090), to show the setting reaches the script and the raft address.
const WITNESS_PORT: u16 = 8097;

#[test]
fn ec2_provider_against_moto() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let moto_server = PathBuf::from(std::env::var_os("TANDEM_MOTO_SERVER").expect("set by the parent"));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(scenarios(&moto_server));
        return;
    }
    let Some(moto_server) = find_moto_server() else {
        let required = ["CI", "TANDEM_REQUIRE_MOTO"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        assert!(
            !required,
            "moto_server not found: set TANDEM_MOTO_SERVER to its path or put it on PATH (scripts/test installs it \
             into target/moto-venv)"
        );
        eprintln!("{TEST_NAME}: SKIPPED, no moto_server (set TANDEM_MOTO_SERVER or run scripts/test)");
        return;
    };
    let home = TempDir::new().expect("temp dir");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"));
    child.args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            child.env_remove(name);
        }
    }
    let output = child
        .env(CHILD_ENV, "1")
        .env("TANDEM_MOTO_SERVER", &moto_server)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_ACCESS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.path().join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("no-credentials"))
        .output()
        .expect("run the scenarios in a child process");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the scenarios against moto failed: {}", output.status);
}

/// `TANDEM_MOTO_SERVER`, or `moto_server` on PATH.
fn find_moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_MOTO_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "TANDEM_MOTO_SERVER={} is not a file", path.display());
        return Some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("moto_server")).find(|p| p.is_file())
}

/// moto's server on a free port of 127.0.0.1, killed on drop.
struct Moto {
    process: Child,
    url: String,
    _log_dir: TempDir,
}

impl Moto {
    async fn start(moto_server: &Path) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let log_dir = TempDir::new().expect("temp dir");
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("moto log");
        let process = Command::new(moto_server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let moto = Moto { process, url: format!("http://127.0.0.1:{port}"), _log_dir: log_dir };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(format!("{}/moto-api/", moto.url)).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {} within 60 s; its log:\n{}",
                moto.url,
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// What the scenarios share: moto, an SDK client for looking behind the provider's back, and the
/// network, AMI and instance profile the workers launch with.
struct World {
    moto: Moto,
    sdk: aws_sdk_ec2::Client,
    ami: String,
    subnet: String,
    security_group: String,
}

impl World {
    async fn set_up(moto_server: &Path) -> World {
        let moto = Moto::start(moto_server).await;
        // An SDK client configured exactly as the provider's, from a provider of its own.
        let setup = Ec2Provider::new(&options(&moto.url, "setup", "ami-unused", None, &[]), None)
            .await
            .expect("a provider from the AWS chain");
        let sdk = setup.client().sdk().clone();
        let images = sdk.describe_images().send().await.expect("DescribeImages");
        let ami = images.images().iter().find_map(|image| image.image_id()).expect("moto knows some AMI").to_owned();
        let vpc = sdk.create_vpc().cidr_block("10.7.0.0/16").send().await.expect("CreateVpc");
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id");
        let subnet = sdk.create_subnet().vpc_id(vpc_id).cidr_block("10.7.1.0/24").send().await.expect("CreateSubnet");
        let subnet = subnet.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_owned();
        let group = sdk
            .create_security_group()
            .group_name("tandem-workers")
            .description("Tandem workers")
            .vpc_id(vpc_id)
            .send()
            .await
            .expect("CreateSecurityGroup");
        let security_group = group.group_id().expect("group id").to_owned();
        create_instance_profile(&moto.url, INSTANCE_PROFILE).await;
        World { moto, sdk, ami, subnet, security_group }
    }

    /// The options of cluster `cluster` in this world.
    fn options(&self, cluster: &str) -> Ec2Options {
        options(&self.moto.url, cluster, &self.ami, Some(&self.subnet), std::slice::from_ref(&self.security_group))
    }

    async fn provider(&self, cluster: &str) -> Ec2Provider {
        Ec2Provider::new(&self.options(cluster), Some(CLUSTER_SECRET.into())).await.expect("provider")
    }

    async fn describe(&self, instance_id: &str) -> aws_sdk_ec2::types::Instance {
        let output = self.sdk.describe_instances().instance_ids(instance_id).send().await.expect("DescribeInstances");
        output.reservations().iter().flat_map(|r| r.instances()).next().cloned().expect("the instance")
    }

    async fn state(&self, instance_id: &str) -> String {
        let instance = self.describe(instance_id).await;
        instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default()
    }

    /// Every instance carrying `tandem:cluster=<cluster>`, in any state, as moto has them.
    async fn all_tagged(&self, cluster: &str) -> Vec<aws_sdk_ec2::types::Instance> {
        let output = self
            .sdk
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{CLUSTER_TAG}")).values(cluster).build())
            .send()
            .await
            .expect("DescribeInstances");
        output.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
    }

    /// Launch an instance around the provider, as another cluster's leader (or a person) would.
    async fn launch_directly(&self, tags: &[(&str, &str)]) -> String {
        let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect();
        let specification = (!tags.is_empty()).then(|| {
            vec![TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build()]
        });
        let output = self
            .sdk
            .run_instances()
            .image_id(&self.ami)
            .min_count(1)
            .max_count(1)
            .set_tag_specifications(specification)
            .send()
            .await
            .expect("RunInstances");
        output.instances()[0].instance_id().expect("instance id").to_owned()
    }
}

fn options(url: &str, cluster: &str, ami: &str, subnet: Option<&str>, groups: &[String]) -> Ec2Options {
    Ec2Options {
        cluster_name: Some(cluster.into()),
        ami: Some(ami.into()),
        instance_type: "c7i.large".into(),
        subnet: subnet.map(str::to_owned),
        security_groups: groups.to_vec(),
        instance_profile: Some(INSTANCE_PROFILE.into()),
        region: Some(REGION.into()),
        endpoint_url: Some(url.into()),
        worker_binary: "/opt/tandem/bin/worker".into(),
        coordinators: vec!["http://10.7.1.10:8080".into(), "http://10.7.1.11:8080".into()],
        worker_give_up_after_ms: 900_000,
        witness_port: WITNESS_PORT,
    }
}

/// An instance profile in moto's IAM. The provider never calls IAM; the test does, with a raw
/// query request (moto routes it by the credential scope and checks no signature).
async fn create_instance_profile(url: &str, name: &str) {
    let response = reqwest::Client::new()
        .post(format!("{url}/"))
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20250101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("Action=CreateInstanceProfile&InstanceProfileName={name}&Version=2010-05-08"))
        .send()
        .await
        .expect("CreateInstanceProfile");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success() && body.contains(name), "CreateInstanceProfile: {status} {body}");
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis()).expect("ms")
}

async fn scenarios(moto_server: &Path) {
    let world = World::set_up(moto_server).await;
    println!("scenario: a launch carries everything");
    a_launch_carries_the_tags_settings_and_user_data(&world).await;
    println!("scenario: list shows exactly the cluster's workers, terminate only touches them");
    list_and_terminate_see_only_the_clusters_workers(&world).await;
    println!("scenario: a new leader finds its predecessor's launch by its tag");
    a_new_leader_adopts_the_launch_instead_of_launching_again(&world).await;
    println!("scenario: a witness is a tagged worker whose voter listens on its private IP");
    a_witness_is_a_tagged_worker_whose_voter_listens_on_its_private_ip(&world).await;
    println!("scenario: misconfiguration is refused, and classified");
    misconfiguration_is_refused_and_classified(&world).await;
    println!("every scenario passed");
}

async fn a_launch_carries_the_tags_settings_and_user_data(world: &World) {
    let provider = world.provider("blue").await;
    let before_ms = now_ms();
    let instance = provider.launch("blue-1").await.expect("launch");
    assert_eq!(instance.token.as_deref(), Some("blue-1"));
    let launched_at = instance.launched_at_ms.expect("launch time");
    assert!(launched_at + 5_000 >= before_ms && launched_at <= now_ms() + 5_000, "launched at {launched_at}");

    let described = world.describe(&instance.instance_id).await;
    let tag = |key: &str| described.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
    assert_eq!(tag(CLUSTER_TAG), Some("blue"));
    assert_eq!(tag(ROLE_TAG), Some("worker"));
    assert_eq!(tag(LAUNCH_TOKEN_TAG), Some("blue-1"));
    assert_eq!(described.instance_type().map(|t| t.as_str()), Some("c7i.large"));
    assert_eq!(described.image_id(), Some(world.ami.as_str()));
    assert_eq!(described.subnet_id(), Some(world.subnet.as_str()));
    let groups: Vec<_> = described.security_groups().iter().filter_map(|g| g.group_id()).collect();
    assert_eq!(groups, vec![world.security_group.as_str()]);
    let profile = described.iam_instance_profile().and_then(|p| p.arn()).expect("an instance profile");
    assert!(profile.ends_with(&format!(":instance-profile/{INSTANCE_PROFILE}")), "{profile}");
    let metadata = described.metadata_options().expect("metadata options");
    assert_eq!(metadata.http_tokens(), Some(&HttpTokensState::Required));
    assert_eq!(metadata.http_endpoint(), Some(&InstanceMetadataEndpointState::Enabled));

    let attribute = |name: InstanceAttributeName| {
        world.sdk.describe_instance_attribute().instance_id(&instance.instance_id).attribute(name).send()
    };
    let shutdown = attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior).await.expect("attribute");
    assert_eq!(shutdown.instance_initiated_shutdown_behavior().and_then(|v| v.value()), Some("terminate"));
    let user_data = attribute(InstanceAttributeName::UserData).await.expect("attribute");
    let encoded = user_data.user_data().and_then(|v| v.value()).expect("user-data");
    let script = String::from_utf8(aws_smithy_types::base64::decode(encoded).expect("base64")).expect("utf-8");
    let rendered = provider.worker_launch().request("blue-1").expect("the same launch").user_data;
    assert_eq!(script, rendered, "user-data is the rendered script");
    assert!(script.contains("TANDEM_LAUNCH_TOKEN=blue-1\n"));
    assert!(script.contains("TANDEM_COORDINATORS=http://10.7.1.10:8080,http://10.7.1.11:8080\n"));
    assert!(script.contains(&format!("TANDEM_CLUSTER_SECRET={CLUSTER_SECRET}\n")));
    assert_eq!(find_access_key_id(&script), None, "no access key id in user-data");
    assert!(!script.contains(DUMMY_SECRET_ACCESS_KEY) && !script.contains("AWS_"), "no AWS credential in user-data");
    for tag in described.tags() {
        let text = format!("{:?}={:?}", tag.key(), tag.value());
        assert!(find_access_key_id(&text).is_none() && !text.contains(DUMMY_SECRET_ACCESS_KEY), "{text}");
    }
}

async fn list_and_terminate_see_only_the_clusters_workers(world: &World) {
    let provider = world.provider("green").await;
    let first = provider.launch("green-1").await.expect("launch");
    let second = provider.launch("green-2").await.expect("launch");
    let other_cluster = world.launch_directly(&[(CLUSTER_TAG, "red"), (ROLE_TAG, "worker")]).await;
    let coordinator = world.launch_directly(&[(CLUSTER_TAG, "green"), (ROLE_TAG, "coordinator")]).await;
    let untagged = world.launch_directly(&[]).await;

    let mut listed: Vec<_> =
        provider.list().await.expect("list").into_iter().map(|i| (i.instance_id, i.token)).collect();
    listed.sort();
    let mut expected = vec![
        (first.instance_id.clone(), Some("green-1".to_owned())),
        (second.instance_id.clone(), Some("green-2".to_owned())),
    ];
    expected.sort();
    assert_eq!(listed, expected, "exactly the cluster's workers");

    for foreign in [&other_cluster, &coordinator, &untagged] {
        let error = provider.terminate(foreign).await.expect_err("not this cluster's worker");
        assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
        assert_ne!(world.state(foreign).await, "terminated", "{foreign} survives");
    }

    provider.terminate(&first.instance_id).await.expect("terminate");
    let state = world.state(&first.instance_id).await;
    assert!(state == "shutting-down" || state == "terminated", "{state}");
    let listed: Vec<_> = provider.list().await.expect("list").into_iter().map(|i| i.instance_id).collect();
    assert_eq!(listed, vec![second.instance_id.clone()], "a terminated worker is not listed");
    provider.terminate(&first.instance_id).await.expect("terminating it again succeeds");
    provider.terminate("i-0123456789abcdef0").await.expect("terminating an unknown instance succeeds");
}

async fn a_new_leader_adopts_the_launch_instead_of_launching_again(world: &World) {
    let old_leader = world.provider("handover").await;
    let launched = old_leader.launch("handover-T").await.expect("launch");
    drop(old_leader); // the leader dies right after RunInstances, before it records the instance

    let new_leader = world.provider("handover").await;
    let listed = new_leader.list().await.expect("list");
    let found = listed.iter().find(|i| i.token.as_deref() == Some("handover-T")).expect("found by its token tag");
    assert_eq!(found.instance_id, launched.instance_id);
    // Repeating the launch (as a new leader does with a committed launch it cannot account
    // for) finds the instance by its tag; moto ignores ClientToken, so only the tag can.
    let again = new_leader.launch("handover-T").await.expect("launch again");
    assert_eq!(again.instance_id, launched.instance_id);
    assert_eq!(world.all_tagged("handover").await.len(), 1, "one instance for one token");
}

async fn a_witness_is_a_tagged_worker_whose_voter_listens_on_its_private_ip(world: &World) {
    let provider = world.provider("witness").await;
    let witness = provider.launch_witness("witness-W", 4).await.expect("witness launch");
    let instance_id = &witness.instance.instance_id;
    assert_eq!(witness.instance.token.as_deref(), Some("witness-W"));

    let described = world.describe(instance_id).await;
    let tag = |key: &str| described.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
    assert_eq!(tag(CLUSTER_TAG), Some("witness"));
    assert_eq!(tag(ROLE_TAG), Some("worker"), "a witness is this cluster's worker");
    assert_eq!(tag(VOTER_ID_TAG), Some("4"));
    assert_eq!(tag(LAUNCH_TOKEN_TAG), Some("witness-W"));
    let ip = described.private_ip_address().expect("a private IP");
    assert!(ip.starts_with("10.7.1."), "{ip} is in the workers' subnet");
    assert_eq!(witness.raft_addr, format!("{ip}:{WITNESS_PORT}"));

    let user_data = world
        .sdk
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("attribute");
    let encoded = user_data.user_data().and_then(|v| v.value()).expect("user-data");
    let script = String::from_utf8(aws_smithy_types::base64::decode(encoded).expect("base64")).expect("utf-8");
    let rendered = provider.worker_launch().request_witness("witness-W", 4).expect("the same launch").user_data;
    assert_eq!(script, rendered, "user-data is the rendered witness script");
    for line in [
        "TANDEM_WITNESS=true\n".to_owned(),
        "TANDEM_WITNESS_ID=4\n".to_owned(),
        format!("TANDEM_WITNESS_LISTEN=0.0.0.0:{WITNESS_PORT}\n"),
        "TANDEM_WITNESS_DATA_DIR=/var/lib/tandem/witness\n".to_owned(),
        "TANDEM_LAUNCH_TOKEN=witness-W\n".to_owned(),
        format!("TANDEM_CLUSTER_SECRET={CLUSTER_SECRET}\n"),
        "StateDirectory=tandem\n".to_owned(),
    ] {
        assert!(script.contains(&line), "{line:?} in the witness's user-data");
    }
    assert_eq!(find_access_key_id(&script), None, "no access key id in user-data");
    assert!(!script.contains(DUMMY_SECRET_ACCESS_KEY) && !script.contains("AWS_"), "no AWS credential in user-data");

    // Listed as the cluster's worker; a repeated launch (a new leader carrying on) finds it by
    // its tag and answers the same address; it can be terminated, as a failed replacement's is.
    let listed: Vec<_> = provider.list().await.expect("list").into_iter().map(|i| i.instance_id).collect();
    assert_eq!(listed, vec![instance_id.clone()]);
    let again = world.provider("witness").await.launch_witness("witness-W", 4).await.expect("launch again");
    assert_eq!(again, witness);
    assert_eq!(world.all_tagged("witness").await.len(), 1, "one instance for one token");
    provider.terminate(instance_id).await.expect("terminate");
    let state = world.state(instance_id).await;
    assert!(state == "shutting-down" || state == "terminated", "{state}");

    // The AWS-key refusal holds for a witness's script too: nothing is launched.
    let provider = Ec2Provider::new(&world.options("witness-refused"), Some(DUMMY_SECRET_ACCESS_KEY.into()))
        .await
        .expect("provider");
    let error = provider.launch_witness("witness-R", 5).await.expect_err("the secret key in user-data");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(error.message.contains("secret access key"), "{error}");
    assert!(world.all_tagged("witness-refused").await.is_empty(), "no instance was launched");
}

async fn misconfiguration_is_refused_and_classified(world: &World) {
    // moto checks subnets, not AMIs.
    let mut unknown_subnet = world.options("misconfigured");
    unknown_subnet.subnet = Some("subnet-00000000deadbeef0".into());
    let provider = Ec2Provider::new(&unknown_subnet, None).await.expect("provider");
    let error = provider.launch("m-1").await.expect_err("an unknown subnet");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(error.message.contains("InvalidSubnetID"), "{error}");

    // A cluster secret that is this process's AWS secret key never reaches EC2.
    let provider = Ec2Provider::new(&world.options("misconfigured"), Some(DUMMY_SECRET_ACCESS_KEY.into()))
        .await
        .expect("provider");
    let error = provider.launch("m-2").await.expect_err("the secret key in user-data");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(error.message.contains("secret access key"), "{error}");
    // Nor does one that looks like an access key id.
    let provider = Ec2Provider::new(&world.options("misconfigured"), Some(["AKIA", "TESTONLY0000000D"].concat()))
        .await
        .expect("provider");
    let error = provider.launch("m-3").await.expect_err("an access key id in user-data");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(world.all_tagged("misconfigured").await.is_empty(), "no instance was launched");

    // TLS through the provider's own client (rustls, the system's roots): speaking it to moto's
    // plain-http port fails the handshake, as an error of its own kind, without hanging.
    let tls = Ec2Options { endpoint_url: Some(world.moto.url.replace("http://", "https://")), ..world.options("x") };
    let provider = Ec2Provider::new(&tls, None).await.expect("provider");
    let error = provider.list().await.expect_err("no TLS on moto's port");
    assert_eq!(error.kind, ProviderErrorKind::Other, "{error}");
    assert!(error.message.contains("InvalidContentType"), "rustls read moto's plain http: {error}");

    let missing = Ec2Options { cluster_name: None, ..world.options("x") };
    let error = Ec2Provider::new(&missing, None).await.expect_err("no cluster name");
    assert_eq!(error.kind, ProviderErrorKind::Configuration);
}
