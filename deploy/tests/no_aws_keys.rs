//! No file of the repository holds anything that looks like an AWS access key id or secret
//! access key (`deploy::leaks`). Files `deploy` generates are scanned by the tests that generate
//! them (`deploy/tests/aws.rs` scans `deploy aws`'s state and output and every user-data).

use std::path::Path;
use std::process::Command;

use deploy::leaks::{find_access_key_id, find_secret_access_key};

#[test]
fn no_file_of_the_repository_holds_an_aws_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output();
    let files = match listed {
        Ok(output) if output.status.success() => output.stdout,
        _ => {
            let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
            assert!(!required, "git ls-files failed in {}: the scan needs a git checkout", root.display());
            eprintln!("no_file_of_the_repository_holds_an_aws_key: SKIPPED, not a git checkout");
            return;
        }
    };
    let mut scanned = 0;
    let mut found = Vec::new();
    for name in files.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name);
        let Ok(bytes) = std::fs::read(root.join(name.as_ref())) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        scanned += 1;
        if let Some(at) = find_access_key_id(&text) {
            found.push(format!("{name}: an access key id at byte {at}"));
        }
        if let Some(at) = find_secret_access_key(&text) {
            found.push(format!("{name}: a secret access key at byte {at}"));
        }
    }
    assert!(scanned > 100, "only {scanned} files scanned");
    assert!(found.is_empty(), "AWS keys in the repository:\n{}", found.join("\n"));
}
