//! The one description of a cluster's voters: ids, roles and addresses. The coordinators read
//! it from `--member`; `deploy` writes it for the processes or instances it starts; Raft's
//! membership records the same roles ([`Role`]).
//!
//! The text form is `ID=ROLE@HOST:PORT`, several separated by commas:
//! `1=coordinator@10.0.0.1:8080,2=coordinator@10.0.0.2:8080,3=witness@10.0.0.3:8090`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a voter does besides voting.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves the client API and may lead.
    #[default]
    Coordinator,
    /// Votes and holds the log; hands leadership to a coordinator whenever it wins an election.
    Witness,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Coordinator => "coordinator",
            Role::Witness => "witness",
        })
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coordinator" => Ok(Role::Coordinator),
            "witness" => Ok(Role::Witness),
            other => Err(format!("a role is coordinator or witness, not {other:?}")),
        }
    }
}

/// One voter: `ID=ROLE@HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The voter's id; never reused with an empty disk.
    pub id: u64,
    /// Coordinator or witness.
    pub role: Role,
    /// Its address (a coordinator serves the API and Raft on it; the witness only Raft).
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}@{}", self.id, self.role, self.addr)
    }
}

impl FromStr for Member {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected ID=ROLE@HOST:PORT (ROLE: coordinator or witness), got {s:?}");
        let (id, rest) = s.split_once('=').ok_or_else(bad)?;
        let (role, addr) = rest.split_once('@').ok_or_else(bad)?;
        let id = id.trim().parse().map_err(|_| bad())?;
        let role: Role = role.trim().parse().map_err(|_| bad())?;
        if addr.trim().is_empty() {
            return Err(bad());
        }
        Ok(Member { id, role, addr: addr.trim().to_owned() })
    }
}

/// Every voter of a cluster, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members(pub Vec<Member>);

/// The voters every cluster `deploy` starts has, locally or on EC2: two coordinators (ids 1 and
/// 2) and the witness (id 3, inside the first worker).
pub const LAYOUT: [(u64, Role); 3] = [(1, Role::Coordinator), (2, Role::Coordinator), (3, Role::Witness)];

impl Members {
    /// The [`LAYOUT`], each voter at the address `addr` gives it.
    pub fn layout(addr: impl Fn(u64, Role) -> String) -> Members {
        Members(LAYOUT.iter().map(|&(id, role)| Member { id, role, addr: addr(id, role) }).collect())
    }
}

impl Members {
    /// The member with id `id`.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.0.iter().find(|member| member.id == id)
    }

    /// The same members with `old`'s id changed to `new` (a replacement at the same address).
    pub fn renumbered(&self, old: u64, new: u64) -> Members {
        Members(
            self.0
                .iter()
                .map(|member| Member { id: if member.id == old { new } else { member.id }, ..member.clone() })
                .collect(),
        )
    }
}

impl fmt::Display for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, member) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{member}")?;
        }
        Ok(())
    }
}

impl FromStr for Members {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',').filter(|part| !part.trim().is_empty()).map(str::parse).collect::<Result<_, _>>().map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_reads_and_writes_as_id_role_at_address() {
        let m: Member = "3=witness@10.0.0.3:8090".parse().expect("valid");
        assert_eq!(m, Member { id: 3, role: Role::Witness, addr: "10.0.0.3:8090".into() });
        assert_eq!(m.to_string(), "3=witness@10.0.0.3:8090");
        for bad in ["3=boss@x:1", "x=witness@a:1", "3witness@a:1", "3=witness@", "3=witness@ "] {
            assert!(bad.parse::<Member>().is_err(), "{bad}");
        }
    }

    #[test]
    fn members_round_trip_and_renumber() {
        let text = "1=coordinator@127.0.0.1:8080,2=coordinator@127.0.0.1:8081,3=witness@127.0.0.1:8090";
        let members: Members = text.parse().expect("valid");
        assert_eq!(members.0.len(), 3);
        assert_eq!(members.to_string(), text);
        assert_eq!(members.get(3).map(|m| m.role), Some(Role::Witness));
        let renumbered = members.renumbered(2, 4);
        assert_eq!(
            renumbered.to_string(),
            "1=coordinator@127.0.0.1:8080,4=coordinator@127.0.0.1:8081,3=witness@127.0.0.1:8090"
        );
        assert!("1=coordinator@a:1,x".parse::<Members>().is_err());
    }
}
