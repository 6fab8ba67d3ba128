//! `deploy aws up | status | down`, the real binary, against moto's EC2 server on 127.0.0.1:
//! what `up` creates (security group and rules, key pair, the three voters' instances with their
//! tags, metadata options and user-data), that a second `up` changes nothing, that `down` leaves
//! nothing of the cluster and touches nothing else, and that nothing written holds a key.
#![cfg(feature = "aws")]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use deploy::leaks::{find_access_key_id, find_secret_access_key};
use deploy::provider::ec2::aws_sdk_ec2;
use deploy::provider::ec2::aws_sdk_ec2::types::{Filter, HttpTokensState, Tag};
use deploy::provider::ec2::launch::{CLUSTER_TAG, ROLE_TAG, VOTER_ID_TAG};
use tempfile::TempDir;

#[path = "common/moto.rs"]
mod moto;

use moto::{DUMMY_SECRET_ACCESS_KEY, INSTANCE_PROFILE, REGION, World};

const TEST_NAME: &str = "deploy_aws_up_converges_status_shows_and_down_removes_everything_it_made";
const CLUSTER: &str = "t1";
const API_CIDR: &str = "203.0.113.0/24";
const SSH_CIDR: &str = "198.51.100.7/32";

struct Deploy<'a> {
    moto_url: &'a str,
    home: &'a Path,
    state_dir: String,
}

impl Deploy<'_> {
    /// Run `deploy aws <command> <args>` for the test cluster; its stdout, or a panic with its
    /// output if it failed.
    async fn run(&self, command: &str, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.try_run(command, args).await;
        assert!(success, "deploy aws {command} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// Run `deploy aws <command> <args>`: whether it succeeded, its stdout and its stderr.
    async fn try_run(&self, command: &str, args: &[&str]) -> (bool, String, String) {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy"));
        child.args(["aws", command, "--cluster-name", CLUSTER, "--region", REGION, "--endpoint-url"]);
        child.args([self.moto_url, "--state-dir", &self.state_dir]).args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                child.env_remove(name);
            }
        }
        let output = child
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_ACCESS_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.home.join("no-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.join("no-credentials"))
            .kill_on_drop(true)
            .output()
            .await
            .expect("run deploy");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_no_key(&format!("deploy aws {command}'s output"), &format!("{stdout}{stderr}"));
        (output.status.success(), stdout, stderr)
    }
}

fn assert_no_key(what: &str, text: &str) {
    assert!(find_access_key_id(text).is_none(), "{what} holds something like an access key id");
    assert!(find_secret_access_key(text).is_none(), "{what} holds something like a secret access key");
    assert!(!text.contains(DUMMY_SECRET_ACCESS_KEY), "{what} holds the secret access key");
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// A group's ingress rules as (from port, to port, source CIDR or group).
fn rules_of(group: &aws_sdk_ec2::types::SecurityGroup) -> BTreeSet<(i32, i32, String)> {
    group
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
            let cidrs = p.ip_ranges().iter().map(move |r| (from, to, r.cidr_ip().unwrap_or_default().to_owned()));
            let groups =
                p.user_id_group_pairs().iter().map(move |g| (from, to, g.group_id().unwrap_or_default().to_owned()));
            cidrs.chain(groups).collect::<Vec<_>>()
        })
        .collect()
}

fn cluster_filter() -> Filter {
    Filter::builder().name(format!("tag:{CLUSTER_TAG}")).values(CLUSTER).build()
}

async fn instances(sdk: &aws_sdk_ec2::Client, filters: Vec<Filter>) -> Vec<aws_sdk_ec2::types::Instance> {
    let output = sdk.describe_instances().set_filters(Some(filters)).send().await.expect("DescribeInstances");
    output.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
}

fn state_of(instance: &aws_sdk_ec2::types::Instance) -> &str {
    instance.state().and_then(|s| s.name()).map_or("", |n| n.as_str())
}

async fn live_cluster_instances(sdk: &aws_sdk_ec2::Client) -> Vec<aws_sdk_ec2::types::Instance> {
    let live = Filter::builder().name("instance-state-name").values("pending").values("running").build();
    instances(sdk, vec![cluster_filter(), live]).await
}

async fn groups(sdk: &aws_sdk_ec2::Client) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
    let name = Filter::builder().name("group-name").values(format!("tandem-{CLUSTER}")).build();
    sdk.describe_security_groups()
        .filters(name)
        .send()
        .await
        .expect("DescribeSecurityGroups")
        .security_groups()
        .to_vec()
}

async fn key_pairs(sdk: &aws_sdk_ec2::Client) -> usize {
    let name = Filter::builder().name("key-name").values(format!("tandem-{CLUSTER}")).build();
    sdk.describe_key_pairs().filters(name).send().await.expect("DescribeKeyPairs").key_pairs().len()
}

/// Every file under `dir`, read.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push((
                path.display().to_string(),
                String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into(),
            ));
        }
    }
    found
}

#[test]
fn deploy_aws_up_converges_status_shows_and_down_removes_everything_it_made() {
    let Some(moto_server) = moto::in_child_with_dummy_credentials(TEST_NAME) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(up_status_down(&moto_server));
}

async fn up_status_down(moto_server: &Path) {
    let world = World::set_up(moto_server).await;
    let sdk = &world.sdk;
    let ami = world.ami.clone();
    // Another cluster's machine and an untagged one: down must leave them alone.
    let bystanders = [world.launch_directly(&[(CLUSTER_TAG, "other")]).await, world.launch_directly(&[]).await];
    let home = TempDir::new().expect("temp dir");
    let state_dir = home.path().join("state");
    let deploy = Deploy { moto_url: &world.moto.url, home: home.path(), state_dir: state_dir.display().to_string() };
    // In moto's default VPC: what `up` does without --subnet.
    // Resources only: moto's instances have made-up addresses that no SSH reaches (the upload is
    // tested against a real sshd in ssh_bootstrap.rs).
    let up_args = [
        "--api-cidr",
        API_CIDR,
        "--ssh-cidr",
        SSH_CIDR,
        "--ami",
        &ami,
        "--instance-profile",
        INSTANCE_PROFILE,
        "--no-upload",
    ]
    .to_vec();

    // An up that fails half-way (here at the first launch: EC2 refuses an unknown instance
    // profile, as it would refuse expired credentials) leaves what it made; the next up
    // converges from there.
    let broken: Vec<&str> =
        up_args.iter().map(|arg| if *arg == INSTANCE_PROFILE { "no-such-profile" } else { *arg }).collect();
    let (success, _, stderr) = deploy.try_run("up", &broken).await;
    assert!(!success && stderr.contains("RunInstances for voter 1"), "{stderr}");
    assert!(live_cluster_instances(sdk).await.is_empty());
    assert_eq!((groups(sdk).await.len(), key_pairs(sdk).await), (1, 1), "the group and key pair were made");

    let printed = deploy.run("up", &up_args).await;
    // The security group: the API to the configured CIDR, SSH to the operator, the rest only
    // within the group; nothing open to the world.
    let group = groups(sdk).await;
    assert_eq!(group.len(), 1, "one security group");
    let group = &group[0];
    let group_id = group.group_id().expect("id").to_owned();
    assert_eq!(tag(group.tags(), CLUSTER_TAG), Some(CLUSTER));
    let rules = rules_of(group);
    let expected: BTreeSet<(i32, i32, String)> =
        [(8080, 8080, API_CIDR.to_owned()), (22, 22, SSH_CIDR.to_owned()), (0, 65535, group_id.clone())].into();
    assert_eq!(rules, expected);
    assert_eq!(key_pairs(sdk).await, 1);
    // The instances: three voters, tagged, IMDSv2 only, in the group, with the key; the profile
    // on the coordinators only.
    let voters = live_cluster_instances(sdk).await;
    assert_eq!(voters.len(), 3, "two coordinators and the witness's worker");
    let mut seen = BTreeSet::new();
    for instance in &voters {
        let id = instance.instance_id().expect("id");
        let voter: u64 = tag(instance.tags(), VOTER_ID_TAG).expect("voter id").parse().expect("a number");
        let role = tag(instance.tags(), ROLE_TAG).expect("role");
        seen.insert((voter, role.to_owned()));
        let metadata = instance.metadata_options().expect("metadata options");
        assert_eq!(metadata.http_tokens(), Some(&HttpTokensState::Required), "{id}: IMDSv2 only");
        assert_eq!(instance.key_name(), Some(format!("tandem-{CLUSTER}").as_str()));
        assert!(instance.security_groups().iter().any(|g| g.group_id() == Some(group_id.as_str())), "{id}");
        let profile = instance.iam_instance_profile().and_then(|p| p.arn()).unwrap_or_default();
        assert_eq!(
            profile.ends_with(&format!("/{INSTANCE_PROFILE}")),
            role == "coordinator",
            "{id} ({role}): {profile:?}"
        );
        assert!(printed.contains(id), "up's output names {id}:\n{printed}");
        let script = world.user_data(id).await;
        assert!(script.starts_with("#!/bin/bash") && script.contains("Restart=always"), "{script}");
        assert_no_key(&format!("{id}'s user-data"), &script);
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).expect("state")).expect("JSON");
        for secret in ["cluster_secret", "admin_token"] {
            let value = state[secret].as_str().expect(secret);
            assert!(value.len() >= 32 && !script.contains(value), "{id}'s user-data holds the {secret}");
        }
    }
    let expected_voters: BTreeSet<(u64, String)> =
        [(1, "coordinator".to_owned()), (2, "coordinator".to_owned()), (3, "worker".to_owned())].into();
    assert_eq!(seen, expected_voters);
    // What the operator keeps is private and holds no AWS key.
    for name in ["state.json", "ssh-key.pem"] {
        let mode = std::fs::metadata(state_dir.join(name)).expect(name).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    for (path, text) in files_under(&state_dir) {
        assert_no_key(&path, &text);
    }

    // Again: nothing changes.
    let ids = |instances: &[aws_sdk_ec2::types::Instance]| -> BTreeSet<String> {
        instances.iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect()
    };
    let before = ids(&voters);
    deploy.run("up", &up_args).await;
    assert_eq!(ids(&live_cluster_instances(sdk).await), before, "a second up launches nothing");
    assert_eq!(groups(sdk).await.len(), 1);
    assert_eq!(groups(sdk).await[0].ip_permissions().len(), group.ip_permissions().len(), "no rule added twice");
    assert_eq!(key_pairs(sdk).await, 1);
    // Uploading needs SSH: without --ssh-cidr, up says so before it touches anything.
    let (success, _, stderr) =
        deploy.try_run("up", &["--api-cidr", API_CIDR, "--ami", &ami, "--instance-profile", INSTANCE_PROFILE]).await;
    assert!(!success && stderr.contains("give --ssh-cidr"), "{stderr}");
    assert_eq!(ids(&live_cluster_instances(sdk).await), before);

    // Another CIDR for the API and no SSH: the group has exactly the new rules (the old CIDR
    // and SSH revoked), and the instances are left alone.
    let moved = ["--api-cidr", "192.0.2.0/24", "--ami", &ami, "--instance-profile", INSTANCE_PROFILE, "--no-upload"];
    deploy.run("up", &moved).await;
    let rules_now = rules_of(&groups(sdk).await[0]);
    let expected: BTreeSet<(i32, i32, String)> =
        [(8080, 8080, "192.0.2.0/24".to_owned()), (0, 65535, group_id.clone())].into();
    assert_eq!(rules_now, expected);
    assert_eq!(ids(&live_cluster_instances(sdk).await), before);
    deploy.run("up", &up_args).await;
    assert_eq!(rules_of(&groups(sdk).await[0]), rules, "back as it was");

    // A voter lost: up launches that one again, and only it.
    let lost =
        voters.iter().find(|i| tag(i.tags(), VOTER_ID_TAG) == Some("2")).and_then(|i| i.instance_id()).expect("2");
    sdk.terminate_instances().instance_ids(lost).send().await.expect("TerminateInstances");
    deploy.run("up", &up_args).await;
    let after = live_cluster_instances(sdk).await;
    assert_eq!(after.len(), 3);
    assert_eq!(ids(&after).difference(&before).count(), 1, "one new instance, for voter 2");

    // status lists what is there.
    // (Not asking the coordinators: moto's instances have made-up public addresses.)
    let status = deploy.run("status", &["--no-probe"]).await;
    for id in ids(&after) {
        assert!(status.contains(&id), "status names {id}:\n{status}");
    }
    assert!(status.contains(&group_id), "{status}");

    // An autoscaled worker of this cluster: down ends it too.
    world.launch_directly(&[(CLUSTER_TAG, CLUSTER), (ROLE_TAG, "worker")]).await;

    let printed = deploy.run("down", &[]).await;
    assert!(printed.contains("terminated"), "{printed}");
    assert!(live_cluster_instances(sdk).await.is_empty(), "no instance of the cluster left");
    assert!(groups(sdk).await.is_empty(), "the security group deleted");
    assert_eq!(key_pairs(sdk).await, 0, "the key pair deleted");
    assert!(!state_dir.join("state.json").exists() && !state_dir.join("ssh-key.pem").exists());
    for id in &bystanders {
        let found = instances(sdk, vec![Filter::builder().name("instance-id").values(id).build()]).await;
        assert_eq!(found.first().map(state_of), Some("running"), "{id}, not the cluster's, still runs");
    }
    // And again: nothing to do.
    let printed = deploy.run("down", &[]).await;
    assert!(printed.contains("nothing left"), "{printed}");
}
