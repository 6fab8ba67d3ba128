//! The AWS permissions a cluster's machines get, as IAM policy documents (in `deploy/iam/`):
//! the coordinators' role may do exactly what the leader's EC2 provider does ([`EC2_ACTIONS`]),
//! launching and terminating only instances tagged as this cluster's workers; workers get no
//! role at all. Attach [`coordinator_policy`] to the role of the instance profile given to
//! `deploy aws up --instance-profile` (`up` does not create IAM roles yet).

/// Every EC2 action the leader's provider performs: `RunInstances` (with tags at launch, which
/// needs `CreateTags`), `DescribeInstances`, `TerminateInstances`.
pub const EC2_ACTIONS: [&str; 4] =
    ["ec2:CreateTags", "ec2:DescribeInstances", "ec2:RunInstances", "ec2:TerminateInstances"];

/// The coordinators' permissions, `${cluster}` standing for the cluster's name.
pub const COORDINATOR_POLICY_TEMPLATE: &str = include_str!("../iam/coordinator-policy.json");

/// Whom the coordinators' role trusts: EC2 instances.
pub const EC2_TRUST_POLICY: &str = include_str!("../iam/ec2-trust-policy.json");

/// The coordinators' permissions for cluster `cluster`.
pub fn coordinator_policy(cluster: &str) -> String {
    COORDINATOR_POLICY_TEMPLATE.replace("${cluster}", cluster)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn statements(policy: &str) -> Vec<Value> {
        let document: Value = serde_json::from_str(policy).expect("a JSON policy");
        assert_eq!(document["Version"], "2012-10-17");
        document["Statement"].as_array().expect("statements").clone()
    }

    fn strings(value: &Value) -> Vec<String> {
        match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn the_coordinators_may_do_what_the_provider_does_and_nothing_else() {
        let policy = coordinator_policy("blue");
        assert!(!policy.contains("${cluster}"));
        let granted = statements(&policy);
        let actions: BTreeSet<String> = granted.iter().flat_map(|s| strings(&s["Action"])).collect();
        assert_eq!(actions, EC2_ACTIONS.iter().map(|a| (*a).to_owned()).collect());
        for statement in &granted {
            assert_eq!(statement["Effect"], "Allow");
            let actions = strings(&statement["Action"]);
            let resources = strings(&statement["Resource"]);
            let conditions = &statement["Condition"]["StringEquals"];
            // Instances are launched and terminated only as this cluster's workers; tags are
            // set only in the launch itself.
            let on_instances = resources.iter().any(|r| r.contains(":instance/"));
            if on_instances && actions.iter().any(|a| a == "ec2:RunInstances") {
                assert_eq!(conditions["aws:RequestTag/tandem:cluster"], "blue", "{statement}");
                assert_eq!(conditions["aws:RequestTag/tandem:role"], "worker", "{statement}");
            }
            if actions.iter().any(|a| a == "ec2:TerminateInstances") {
                assert_eq!(conditions["aws:ResourceTag/tandem:cluster"], "blue", "{statement}");
                assert_eq!(conditions["aws:ResourceTag/tandem:role"], "worker", "{statement}");
            }
            if actions.iter().any(|a| a == "ec2:CreateTags") {
                assert_eq!(conditions["ec2:CreateAction"], "RunInstances", "{statement}");
            }
            if resources.iter().any(|r| r == "*") {
                assert_eq!(actions, ["ec2:DescribeInstances"], "only describing is on every resource");
            }
        }
        let trust = statements(EC2_TRUST_POLICY);
        assert_eq!(trust[0]["Principal"]["Service"], "ec2.amazonaws.com");
        assert_eq!(trust[0]["Action"], "sts:AssumeRole");
    }
}
