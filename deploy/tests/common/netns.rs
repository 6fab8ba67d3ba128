//! Network namespaces for the three voters and the other workers, so partitions drop real
//! packets (root only).
//!
//! Each voter gets a namespace of its own (and the workers besides the witness's share a
//! fourth) with one veth into a bridge in the test's namespace,
//! and an address on a private /24 made for this test run. The test, the clients and the other
//! workers stay in the test's namespace and reach the voters through the bridge. A partition is
//! a pair of iptables DROP rules inside a voter's namespace (to and from each peer's address);
//! healing flushes them. Dropping the value removes the namespaces and the bridge.

use std::process::Command;

/// The voters' namespaces and bridge.
pub struct VoterNetwork {
    tag: String,
    prefix: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl VoterNetwork {
    /// Why namespaces cannot be used here, if they cannot (not root, no `ip` or `iptables`).
    pub fn unavailable() -> Option<String> {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            return Some("not running as root".into());
        }
        for tool in ["ip", "iptables"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Some(format!("{tool} is not installed"));
            }
        }
        None
    }

    /// Make the namespaces, veths and bridge for this test run.
    pub fn create() -> Result<VoterNetwork, String> {
        // Names and the subnet are unique per network, not just per test process: a namespace
        // is torn down asynchronously by the kernel, so the next scenario must not reuse names.
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let pid = std::process::id();
        let tag = format!("tdm{}{serial}", pid % 100_000);
        let prefix = format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 25 * 10 + serial);
        let net = VoterNetwork { tag, prefix };
        let bridge = net.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("{}.1/24", net.prefix), "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for voter in 1..=4 {
            let ns = net.netns(voter);
            let veth = format!("{}v{voter}", net.tag);
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run(&["ip", "link", "set", &veth, "master", &bridge])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", net.host(voter)), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Voter `voter`'s namespace (1, 2 or 3; 4 is the workers').
    pub fn netns(&self, voter: u64) -> String {
        format!("{}-{voter}", self.tag)
    }

    /// Voter `voter`'s address.
    pub fn host(&self, voter: u64) -> String {
        format!("{}.{}", self.prefix, 10 + voter)
    }

    /// Drop every packet between voter `a` and each of `peers`, both ways.
    pub fn partition(&self, a: u64, peers: &[u64]) {
        let ns = self.netns(a);
        for peer in peers {
            let host = self.host(*peer);
            for (chain, flag) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                run(&["ip", "netns", "exec", &ns, "iptables", "-A", chain, flag, &host, "-j", "DROP"])
                    .expect("iptables rule");
            }
        }
    }

    /// The workers' namespace and address (for `LocalOptions::worker_netns`).
    pub fn workers(&self) -> (String, String) {
        (self.netns(4), self.host(4))
    }

    /// Cut the workers off from both coordinators (and the witness), both ways.
    pub fn cut_workers_off(&self) {
        self.partition(4, &[1, 2, 3]);
    }

    /// Remove every rule.
    pub fn heal(&self) {
        for voter in 1..=4 {
            run(&["ip", "netns", "exec", &self.netns(voter), "iptables", "-F"]).expect("iptables flush");
        }
    }
}

impl Drop for VoterNetwork {
    fn drop(&mut self) {
        for voter in 1..=4 {
            // Deleting our end of the veth removes both ends now, whenever the kernel gets
            // round to destroying the namespace itself.
            let _ = run(&["ip", "link", "del", &format!("{}v{voter}", self.tag)]);
            let _ = run(&["ip", "netns", "del", &self.netns(voter)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }
}
