//! Users, roles and privileges: the vocabulary of Sluice's role-based access control, in the
//! names Milvus gives it (its clients grant and list them), shared by the coordinator (which
//! keeps users and roles, see "Users and roles" in `coord.proto`) and the Milvus front (which
//! checks every call against them when authorization is on).
//!
//! A *grant* lets a role do one privilege (or a privilege group) on an object: its type
//! (`Global`, `Collection` or `User`), its name (`*`: any) and its database (`*`: any). A user
//! holds the roles given to it and `public`; `root` and the holders of `admin` may do
//! everything.

/// The user every deployment has; it may do everything and is never dropped.
pub const ROOT_USER: &str = "root";
/// `root`'s password until it is changed (Milvus's).
pub const DEFAULT_ROOT_PASSWORD: &str = "Milvus";
/// The role that may do everything; it cannot be dropped or changed.
pub const ADMIN_ROLE: &str = "admin";
/// The role every user holds; it cannot be dropped.
pub const PUBLIC_ROLE: &str = "public";
/// Any object name, database or privilege in a grant.
pub const ANY: &str = "*";
/// The privilege name covering every privilege.
pub const ALL: &str = "All";

/// The object types a grant names.
pub const OBJECT_TYPES: [&str; 3] = ["Global", "Collection", "User"];

/// Privileges on a collection (`Collection` objects; Milvus's collection level).
const COLLECTION_READ_ONLY: &[&str] = &[
    "Query",
    "Search",
    "IndexDetail",
    "GetFlushState",
    "GetLoadState",
    "GetLoadingProgress",
    "HasPartition",
    "ShowPartitions",
    "DescribeCollection",
    "DescribeAlias",
    "GetStatistics",
    "ListAliases",
];
const COLLECTION_READ_WRITE: &[&str] = &[
    "Load",
    "Release",
    "Insert",
    "Delete",
    "Upsert",
    "Import",
    "Flush",
    "Compaction",
    "LoadBalance",
    "CreateIndex",
    "DropIndex",
    "CreatePartition",
    "DropPartition",
];
const COLLECTION_ADMIN: &[&str] = &["CreateAlias", "DropAlias"];
const DATABASE_READ_ONLY: &[&str] = &["ShowCollections", "DescribeDatabase"];
const DATABASE_READ_WRITE: &[&str] = &["AlterDatabase"];
const DATABASE_ADMIN: &[&str] = &["CreateCollection", "DropCollection"];
const CLUSTER_READ_ONLY: &[&str] = &[
    "ListDatabases",
    "SelectOwnership",
    "SelectUser",
    "DescribeResourceGroup",
    "ListResourceGroups",
    "ListPrivilegeGroups",
];
const CLUSTER_READ_WRITE: &[&str] = &[
    "FlushAll",
    "TransferNode",
    "TransferReplica",
    "UpdateResourceGroups",
];
const CLUSTER_ADMIN: &[&str] = &[
    "BackupRBAC",
    "RestoreRBAC",
    "CreateDatabase",
    "DropDatabase",
    "CreateOwnership",
    "DropOwnership",
    "ManageOwnership",
    "CreateResourceGroup",
    "DropResourceGroup",
    "UpdateUser",
    "RenameCollection",
    "CreatePrivilegeGroup",
    "DropPrivilegeGroup",
    "OperatePrivilegeGroup",
];
/// Privileges in no built-in group.
const UNGROUPED: &[&str] = &["AddCollectionField"];

/// The level a privilege (or group) applies at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// One collection (or every one, `*`) of a database.
    Collection,
    /// A database.
    Database,
    /// The whole deployment.
    Cluster,
}

/// A built-in privilege group: its name, level and the privilege lists it joins.
struct Group {
    name: &'static str,
    level: Level,
    parts: &'static [&'static [&'static str]],
}

const GROUPS: [Group; 9] = [
    Group {
        name: "CollectionReadOnly",
        level: Level::Collection,
        parts: &[COLLECTION_READ_ONLY],
    },
    Group {
        name: "CollectionReadWrite",
        level: Level::Collection,
        parts: &[COLLECTION_READ_ONLY, COLLECTION_READ_WRITE],
    },
    Group {
        name: "CollectionAdmin",
        level: Level::Collection,
        parts: &[
            COLLECTION_READ_ONLY,
            COLLECTION_READ_WRITE,
            COLLECTION_ADMIN,
        ],
    },
    Group {
        name: "DatabaseReadOnly",
        level: Level::Database,
        parts: &[DATABASE_READ_ONLY],
    },
    Group {
        name: "DatabaseReadWrite",
        level: Level::Database,
        parts: &[DATABASE_READ_ONLY, DATABASE_READ_WRITE],
    },
    Group {
        name: "DatabaseAdmin",
        level: Level::Database,
        parts: &[DATABASE_READ_ONLY, DATABASE_READ_WRITE, DATABASE_ADMIN],
    },
    Group {
        name: "ClusterReadOnly",
        level: Level::Cluster,
        parts: &[CLUSTER_READ_ONLY],
    },
    Group {
        name: "ClusterReadWrite",
        level: Level::Cluster,
        parts: &[CLUSTER_READ_ONLY, CLUSTER_READ_WRITE],
    },
    Group {
        name: "ClusterAdmin",
        level: Level::Cluster,
        parts: &[CLUSTER_READ_ONLY, CLUSTER_READ_WRITE, CLUSTER_ADMIN],
    },
];

fn group(name: &str) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.name == name)
}

fn privileges() -> impl Iterator<Item = &'static str> {
    [
        COLLECTION_READ_ONLY,
        COLLECTION_READ_WRITE,
        COLLECTION_ADMIN,
        DATABASE_READ_ONLY,
        DATABASE_READ_WRITE,
        DATABASE_ADMIN,
        CLUSTER_READ_ONLY,
        CLUSTER_READ_WRITE,
        CLUSTER_ADMIN,
        UNGROUPED,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// Whether `name` is a privilege, a built-in group, [`ALL`] or [`ANY`].
pub fn is_privilege(name: &str) -> bool {
    name == ALL || name == ANY || group(name).is_some() || is_single(name)
}

/// Whether `name` is one privilege (not a group, [`ALL`] or [`ANY`]).
pub fn is_single(name: &str) -> bool {
    privileges().any(|p| p == name)
}

/// The built-in privilege groups: name and privileges.
pub fn builtin_groups() -> impl Iterator<Item = (&'static str, Vec<&'static str>)> {
    GROUPS.iter().map(|g| {
        (
            g.name,
            g.parts.iter().flat_map(|l| l.iter().copied()).collect(),
        )
    })
}

/// The level of a set of privileges (a custom group's): the highest of theirs, the
/// collection's when empty.
pub fn level_of<'a>(privileges: impl IntoIterator<Item = &'a str>) -> Level {
    let rank = |l: Level| match l {
        Level::Collection => 0,
        Level::Database => 1,
        Level::Cluster => 2,
    };
    privileges
        .into_iter()
        .map(level)
        .max_by_key(|l| rank(*l))
        .unwrap_or(Level::Collection)
}

/// The level of privilege or group `name` (a grant without an object type gets its object
/// from it); [`ALL`] and unknown names are the cluster's.
pub fn level(name: &str) -> Level {
    if let Some(g) = group(name) {
        return g.level;
    }
    let within = |lists: &[&[&str]]| lists.iter().any(|l| l.contains(&name));
    if within(&[
        COLLECTION_READ_ONLY,
        COLLECTION_READ_WRITE,
        COLLECTION_ADMIN,
        UNGROUPED,
    ]) {
        Level::Collection
    } else if within(&[DATABASE_READ_ONLY, DATABASE_READ_WRITE, DATABASE_ADMIN]) {
        Level::Database
    } else {
        Level::Cluster
    }
}

/// Whether a grant of `granted` (a privilege, a group, [`ALL`] or [`ANY`]) covers `needed`.
pub fn covers(granted: &str, needed: &str) -> bool {
    covers_with(granted, needed, &no_custom_groups)
}

/// The privileges of custom privilege group `name`, if there is one.
pub type CustomGroups<'a> = dyn Fn(&str) -> Option<&'a [String]> + 'a;

fn no_custom_groups(_: &str) -> Option<&'static [String]> {
    None
}

/// [`covers`], where `granted` may also be a custom privilege group `custom` knows.
pub fn covers_with(granted: &str, needed: &str, custom: &CustomGroups<'_>) -> bool {
    granted == needed
        || granted == ALL
        || granted == ANY
        || group(granted).is_some_and(|g| g.parts.iter().any(|l| l.contains(&needed)))
        || custom(granted).is_some_and(|privileges| privileges.iter().any(|p| p == needed))
}

/// What a call needs: `privilege` on object `name` of type `object_type` in `database`.
#[derive(Clone, Copy, Debug)]
pub struct Need<'a> {
    /// `Global`, `Collection` or `User`.
    pub object_type: &'a str,
    /// The object's name ([`ANY`] for a global call).
    pub name: &'a str,
    /// The call's database.
    pub database: &'a str,
    /// The privilege.
    pub privilege: &'a str,
}

/// Whether a grant (`object_type`, `object_name`, `database`, `privilege`) lets a call with
/// `need` through: the same object type — or a `Collection` grant for a collection-level
/// privilege Milvus checks on a `Global` object (DescribeCollection, the alias calls), or a
/// grant of everything on every object — name and database equal or [`ANY`], privilege
/// covered.
pub fn permits(grant: (&str, &str, &str, &str), need: &Need<'_>) -> bool {
    permits_with(grant, need, &no_custom_groups)
}

/// [`permits`], where the grant's privilege may be a custom group `custom` knows.
pub fn permits_with(
    (object_type, object_name, database, privilege): (&str, &str, &str, &str),
    need: &Need<'_>,
    custom: &CustomGroups<'_>,
) -> bool {
    let everything = object_name == ANY && (privilege == ALL || privilege == ANY);
    let same_type = object_type == need.object_type
        || (object_type == "Collection" && level(need.privilege) == Level::Collection)
        || everything;
    same_type
        && (object_name == ANY || object_name == need.name)
        && (database == ANY || database == need.database)
        && covers_with(privilege, need.privilege, custom)
}

/// A user name: 1-32 characters of `[A-Za-z0-9_]`, starting with a letter.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the user name {name:?} is invalid: 1-32 letters, digits and underscores, starting \
             with a letter"
        ))
    }
}

/// A role name: 1-32 characters of `[A-Za-z0-9_]`, starting with a letter or an underscore.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the role name {name:?} is invalid: 1-32 letters, digits and underscores, starting \
             with a letter or an underscore"
        ))
    }
}

/// A password: 6 to 256 bytes.
pub fn check_password(password: &str) -> Result<(), String> {
    if (6..=256).contains(&password.len()) {
        Ok(())
    } else {
        Err(format!(
            "a password is 6 to 256 bytes, not {}",
            password.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need<'a>(object_type: &'a str, name: &'a str, privilege: &'a str) -> Need<'a> {
        Need {
            object_type,
            name,
            database: "default",
            privilege,
        }
    }

    #[test]
    fn groups_cover_their_privileges_and_levels_follow_them() {
        assert!(covers("CollectionReadOnly", "Search"));
        assert!(!covers("CollectionReadOnly", "Insert"));
        assert!(covers("CollectionAdmin", "Insert") && covers("CollectionAdmin", "DropAlias"));
        assert!(covers("DatabaseAdmin", "CreateCollection"));
        assert!(!covers("DatabaseReadWrite", "CreateCollection"));
        assert!(
            covers("ClusterAdmin", "CreateDatabase") && covers("ClusterAdmin", "ListDatabases")
        );
        assert!(covers(ALL, "Insert") && covers(ANY, "Insert") && covers("Insert", "Insert"));
        assert_eq!(level("Insert"), Level::Collection);
        assert_eq!(level("CollectionReadWrite"), Level::Collection);
        assert_eq!(level("CreateCollection"), Level::Database);
        assert_eq!(level("CreateDatabase"), Level::Cluster);
        assert!(is_privilege("Search") && is_privilege("ClusterReadOnly") && is_privilege(ALL));
        assert!(!is_privilege("Fly"));
        assert!(is_single("Insert") && !is_single("CollectionAdmin") && !is_single(ALL));
        assert_eq!(builtin_groups().count(), 9);
        assert_eq!(level_of(["Search", "CreateCollection"]), Level::Database);
        assert_eq!(level_of(["Search", "ListDatabases"]), Level::Cluster);
        let mine = vec!["Search".to_owned(), "Query".to_owned()];
        let custom = |name: &str| (name == "readers").then_some(mine.as_slice());
        assert!(covers_with("readers", "Query", &custom));
        assert!(!covers_with("readers", "Insert", &custom));
        assert!(!covers("readers", "Query"));
    }

    #[test]
    fn grants_match_object_name_database_and_privilege() {
        let g = ("Collection", "docs", "default", "Insert");
        assert!(permits(g, &need("Collection", "docs", "Insert")));
        assert!(!permits(g, &need("Collection", "other", "Insert")));
        assert!(!permits(g, &need("Collection", "docs", "Delete")));
        assert!(!permits(g, &need("Global", "*", "Insert")));
        assert!(!permits(
            ("Global", "*", "default", "Insert"),
            &need("Collection", "docs", "Insert")
        ));
        // A collection-level group reaches the collection calls Milvus checks globally.
        let read_only = ("Collection", "docs", "default", "CollectionReadOnly");
        assert!(permits(
            read_only,
            &need("Global", "docs", "DescribeCollection")
        ));
        assert!(!permits(
            read_only,
            &need("Global", "other", "DescribeCollection")
        ));
        assert!(!permits(
            read_only,
            &need("Global", "*", "CreateCollection")
        ));
        assert!(permits(
            ("Global", "*", "*", "*"),
            &need("Collection", "docs", "Delete")
        ));
        let other_db = Need {
            database: "shop",
            ..need("Collection", "docs", "Insert")
        };
        assert!(!permits(g, &other_db));
        assert!(permits(("Collection", "*", "*", "Insert"), &other_db));
        assert!(permits(
            ("Global", "*", "default", "DatabaseAdmin"),
            &need("Global", "*", "CreateCollection")
        ));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_user_name("alice_1").is_ok());
        for bad in ["", "1alice", "a-b", &"a".repeat(33)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
        assert!(check_role_name("_readers").is_ok() && check_role_name("r-w").is_err());
        assert!(check_password("secret").is_ok() && check_password("short").is_err());
        assert!(check_password(&"p".repeat(257)).is_err());
    }
}
