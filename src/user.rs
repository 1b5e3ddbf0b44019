//! `-u USER[:GROUP]` and the image's `User` resolved the way Docker and containerd do it,
//! through the IMAGE's /etc/passwd and /etc/group (read from its extracted layers by the
//! caller), never the host's: a name the image does not know is an error, a number is
//! taken as is.

use crate::error::{Error, Result};

/// The image's user database: the text of its /etc/passwd and /etc/group, if present.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// One /etc/passwd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One /etc/group line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// What the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the image's groups that list the user as a member.
    pub additional_gids: Vec<u32>,
    /// The user's home from /etc/passwd, `/` when the user has no entry (Docker's rule).
    pub home: String,
    pub username: Option<String>,
}

impl UserDb {
    /// Entries of /etc/passwd; malformed lines are skipped, as libc does.
    pub fn users(&self) -> Vec<PasswdEntry> {
        let Some(text) = &self.passwd else {
            return Vec::new();
        };
        text.lines().filter_map(parse_passwd_line).collect()
    }

    /// Entries of /etc/group; malformed lines are skipped.
    pub fn groups(&self) -> Vec<GroupEntry> {
        let Some(text) = &self.group else {
            return Vec::new();
        };
        text.lines().filter_map(parse_group_line).collect()
    }

    /// A group name of the image's /etc/group, or a number (taken as is).
    pub fn resolve_group(&self, g: &str) -> Result<u32> {
        if let Some(gid) = parse_id(g) {
            return Ok(gid);
        }
        validate_name(g, "group")?;
        self.groups()
            .iter()
            .find(|e| e.name == g)
            .map(|e| e.gid)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "group {g:?} in the image's /etc/group{}",
                    if self.group.is_none() {
                        " (the image has no /etc/group)"
                    } else {
                        ""
                    }
                ))
            })
    }

    /// Resolves `USER[:GROUP]` (names or numbers); an empty spec means root.
    pub fn resolve(&self, spec: &str) -> Result<ResolvedUser> {
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if group_part == Some("") {
            return Err(Error::Invalid(format!(
                "invalid user {spec:?}: empty group after ':' (expected USER[:GROUP])"
            )));
        }
        let users = self.users();
        let groups = self.groups();

        let entry = if user_part.is_empty() {
            // No user: root, with root's passwd entry if the image has one.
            Some(
                users
                    .iter()
                    .find(|u| u.uid == 0)
                    .cloned()
                    .unwrap_or(PasswdEntry {
                        name: "root".into(),
                        uid: 0,
                        gid: 0,
                        home: "/root".into(),
                    }),
            )
        } else if let Some(uid) = parse_id(user_part) {
            users.iter().find(|u| u.uid == uid).cloned()
        } else {
            validate_name(user_part, "user")?;
            Some(
                users
                    .iter()
                    .find(|u| u.name == user_part)
                    .cloned()
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "user {user_part:?} in the image's /etc/passwd{}",
                            if self.passwd.is_none() {
                                " (the image has no /etc/passwd)"
                            } else {
                                ""
                            }
                        ))
                    })?,
            )
        };
        let uid = match (&entry, parse_id(user_part)) {
            (Some(e), _) => e.uid,
            (None, Some(uid)) => uid,
            (None, None) => 0,
        };

        let gid = match group_part {
            Some(g) => self.resolve_group(g)?,
            // A uid with no passwd entry runs with gid 0, as in Docker.
            None => entry.as_ref().map(|e| e.gid).unwrap_or(0),
        };

        let mut additional_gids = Vec::new();
        if let Some(e) = &entry {
            for g in &groups {
                if g.members.iter().any(|m| m == &e.name)
                    && g.gid != gid
                    && !additional_gids.contains(&g.gid)
                {
                    additional_gids.push(g.gid);
                }
            }
        }
        Ok(ResolvedUser {
            uid,
            gid,
            additional_gids,
            home: entry
                .as_ref()
                .map(|e| e.home.clone())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "/".into()),
            username: entry.map(|e| e.name),
        })
    }
}

fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn validate_name(name: &str, what: &str) -> Result<()> {
    // All digits but too large for a u32 lands here too: say so rather than "not found".
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Invalid(format!(
            "invalid {what} id {name:?}: larger than {}",
            u32::MAX
        )));
    }
    if name.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(Error::Invalid(format!("invalid {what} name {name:?}")));
    }
    Ok(())
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    // name:password:uid:gid:gecos:home:shell
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || f[0].is_empty() {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_string(),
        uid: parse_id(f[2])?,
        gid: parse_id(f[3])?,
        home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
    })
}

fn parse_group_line(line: &str) -> Option<GroupEntry> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    // name:password:gid:member,member
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 3 || f[0].is_empty() {
        return None;
    }
    Some(GroupEntry {
        name: f[0].to_string(),
        gid: parse_id(f[2])?,
        members: f
            .get(3)
            .map(|m| {
                m.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> UserDb {
        UserDb {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\n\
                 # a comment\n\
                 daemon:x:1:1::/usr/sbin:/bin/false\n\
                 app:x:1000:1000:App:/home/app:/bin/sh\n\
                 broken line\n\
                 bad:x:notanumber:1::/:\n\
                 nohome:x:1001:1001\n"
                    .into(),
            ),
            group: Some(
                "root:x:0:\n\
                 daemon:x:1:\n\
                 app:x:1000:\n\
                 wheel:x:10:app,other\n\
                 audio:x:29: app \n\
                 staff:x:50:other\n"
                    .into(),
            ),
        }
    }

    #[test]
    fn empty_is_root() {
        let u = db().resolve("").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.home, "/root");
        assert_eq!(u.username.as_deref(), Some("root"));
        let u = UserDb::default().resolve("").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
    }

    #[test]
    fn by_name_takes_gid_home_and_supplementary_groups() {
        let u = db().resolve("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, "/home/app");
        assert_eq!(u.additional_gids, vec![10, 29]);
    }

    #[test]
    fn by_number_known_and_unknown() {
        let u = db().resolve("1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.username.as_deref(), Some("app"));
        let u = db().resolve("4242").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        assert_eq!(u.home, "/");
        assert!(u.additional_gids.is_empty());
        assert_eq!(u.username, None);
    }

    #[test]
    fn explicit_group_by_name_and_number() {
        let u = db().resolve("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert_eq!(u.additional_gids, vec![10, 29]);
        let u = db().resolve("1000:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = db().resolve("4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        let u = db().resolve(":wheel").unwrap();
        assert_eq!((u.uid, u.gid), (0, 10));
    }

    #[test]
    fn missing_home_falls_back_to_root_dir() {
        assert_eq!(db().resolve("nohome").unwrap().home, "/");
    }

    #[test]
    fn unknown_names_are_errors_naming_the_file() {
        let e = db().resolve("nobody").unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("\"nobody\"") && m.contains("/etc/passwd")),
            "{e}"
        );
        let e = db().resolve("app:nogroup").unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("\"nogroup\"") && m.contains("/etc/group")),
            "{e}"
        );
        let e = UserDb::default().resolve("app").unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("has no /etc/passwd")),
            "{e}"
        );
    }

    #[test]
    fn malformed_specs_are_errors() {
        assert!(db().resolve("app:").is_err());
        assert!(db().resolve("99999999999").is_err());
        assert!(db().resolve("a b").is_err());
        assert!(db().resolve("0:99999999999").is_err());
    }

    #[test]
    fn host_users_are_never_consulted() {
        // An image with an empty passwd does not know "root" by name even though the host does.
        let empty = UserDb {
            passwd: Some(String::new()),
            group: Some(String::new()),
        };
        assert!(empty.resolve("root").is_err());
        assert_eq!(empty.resolve("0").unwrap().uid, 0);
    }
}
