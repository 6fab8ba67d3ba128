//! moto's EC2 server on 127.0.0.1 for the tests of the EC2 provider (`deploy/tests/ec2.rs`) and
//! of the leader's autoscaler driving it (`coordinator/tests/ec2_autoscaler.rs`, which includes
//! this file by path): finding `moto_server` (`scripts/test` installs it and sets
//! `TANDEM_MOTO_SERVER`), running a test's scenarios in a child process with dummy AWS
//! credentials, starting moto, and the network, AMI and instance profile workers launch with.
//!
//! The provider takes credentials only from the standard AWS chain, so the scenarios need dummy
//! credentials in their environment, and only they: a test runs them in a child process of its
//! own binary with that environment (and no AWS variable of the caller's), rather than changing
//! the environment of a running multi-threaded process. Nothing here writes a key anywhere.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy::provider::ec2::aws_sdk_ec2;
use deploy::provider::ec2::aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use deploy::provider::ec2::launch::CLUSTER_TAG;
use deploy::provider::ec2::{Ec2Options, Ec2Provider};
use tempfile::TempDir;

/// Set in the child process that runs the scenarios.
const CHILD_ENV: &str = "TANDEM_EC2_TEST_CHILD";
/// The child's secret access key: as long as a real one, so the provider looks for it in every
/// user-data it renders.
pub const DUMMY_SECRET_ACCESS_KEY: &str = "tandem/dummy/secret/access/key/for/moto0";
/// The instance profile [`World::set_up`] creates.
pub const INSTANCE_PROFILE: &str = "tandem-worker-test";
/// The region every client names.
pub const REGION: &str = "us-east-1";

/// Run the test `test_name` of this binary again in a child process with dummy AWS credentials,
/// and fail if it fails there. Returns `moto_server`'s path in that child, where the scenarios
/// are to run; `None` in the parent once the child passed, or when moto is not installed and not
/// required (`CI` or `TANDEM_REQUIRE_MOTO` make it a failure).
pub fn in_child_with_dummy_credentials(test_name: &str) -> Option<PathBuf> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Some(PathBuf::from(std::env::var_os("TANDEM_MOTO_SERVER").expect("set by the parent")));
    }
    let Some(moto_server) = find_moto_server() else {
        let required = ["CI", "TANDEM_REQUIRE_MOTO"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        assert!(
            !required,
            "moto_server not found: set TANDEM_MOTO_SERVER to its path or put it on PATH (scripts/test installs it \
             into target/moto-venv)"
        );
        eprintln!("{test_name}: SKIPPED, no moto_server (set TANDEM_MOTO_SERVER or run scripts/test)");
        return None;
    };
    let home = TempDir::new().expect("temp dir");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"));
    child.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
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
    None
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
pub struct Moto {
    process: Child,
    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub url: String,
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
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
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
/// network, AMI and instance profile ([`INSTANCE_PROFILE`]) the workers launch with.
pub struct World {
    pub moto: Moto,
    pub sdk: aws_sdk_ec2::Client,
    pub ami: String,
    pub subnet: String,
    pub security_group: String,
}

impl World {
    /// Start moto and create the network, find an AMI and create the instance profile.
    pub async fn set_up(moto_server: &Path) -> World {
        let moto = Moto::start(moto_server).await;
        // An SDK client configured exactly as the provider's, from a provider of its own.
        let options = Ec2Options {
            cluster_name: Some("setup".into()),
            ami: Some("ami-unused".into()),
            instance_type: "c7i.large".into(),
            subnet: None,
            security_groups: Vec::new(),
            instance_profile: None,
            region: Some(REGION.into()),
            endpoint_url: Some(moto.url.clone()),
            worker_binary: "/opt/tandem/bin/worker".into(),
            worker_binary_sha256: None,
            coordinators: vec!["http://127.0.0.1:1".into()],
            worker_give_up_after_ms: 900_000,
            witness_port: 8090,
        };
        let setup = Ec2Provider::new(&options, None, None).await.expect("a provider from the AWS chain");
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

    pub async fn describe(&self, instance_id: &str) -> aws_sdk_ec2::types::Instance {
        let output = self.sdk.describe_instances().instance_ids(instance_id).send().await.expect("DescribeInstances");
        output.reservations().iter().flat_map(|r| r.instances()).next().cloned().expect("the instance")
    }

    pub async fn state(&self, instance_id: &str) -> String {
        let instance = self.describe(instance_id).await;
        instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default()
    }

    /// Every instance carrying `tandem:cluster=<cluster>`, in any state, as moto has them.
    pub async fn all_tagged(&self, cluster: &str) -> Vec<aws_sdk_ec2::types::Instance> {
        let output = self
            .sdk
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{CLUSTER_TAG}")).values(cluster).build())
            .send()
            .await
            .expect("DescribeInstances");
        output.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
    }

    /// The user-data `instance_id` was launched with, decoded.
    pub async fn user_data(&self, instance_id: &str) -> String {
        let attribute = self
            .sdk
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .expect("DescribeInstanceAttribute");
        let encoded = attribute.user_data().and_then(|v| v.value()).expect("user-data");
        let decoded = deploy::provider::ec2::aws_smithy_types::base64::decode(encoded).expect("base64");
        String::from_utf8(decoded).expect("utf-8")
    }

    /// Launch an instance around the provider, as another cluster's leader (or a person) would.
    pub async fn launch_directly(&self, tags: &[(&str, &str)]) -> String {
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

/// The value of tag `key` on `instance`.
pub fn tag<'a>(instance: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// An instance profile in moto's IAM. The provider never calls IAM; the test does, with a raw
/// query request (moto routes it by the credential scope and checks no signature).
async fn create_instance_profile(url: &str, name: &str) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
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
