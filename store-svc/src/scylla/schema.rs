//! The keyspace and its tables, created and migrated on start. The CQL
//! lives in `store-svc/cql/NNN_name.cql`, one file a version; the
//! `schema_migrations` table records which versions ran. Every statement
//! is idempotent (`IF NOT EXISTS`), so replicas starting at once may all
//! run a version; each records it after its last statement.

use scylla::client::session::Session;

/// One schema version: its number, name and statements.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every version, in the order they run.
pub const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, name: "initial", cql: include_str!("../../cql/001_initial.cql") }];

/// Why the schema could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("keyspace name {0:?}: use 1 to 48 of a-z, 0-9 and _, starting with a letter")]
    Keyspace(String),
    #[error("schema version {version} ({name}): {error}")]
    Migration { version: i32, name: &'static str, error: String },
    #[error("keyspace: {0}")]
    Cql(String),
}

/// How the keyspace replicates: a factor over the whole cluster
/// (SimpleStrategy), or in one named datacenter (NetworkTopologyStrategy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub factor: u32,
    pub datacenter: Option<String>,
}

impl Replication {
    /// The `replication` map of CREATE KEYSPACE.
    pub fn cql(&self) -> String {
        match &self.datacenter {
            None => format!("{{'class': 'SimpleStrategy', 'replication_factor': {}}}", self.factor),
            Some(dc) => {
                format!("{{'class': 'NetworkTopologyStrategy', '{}': {}}}", dc.replace('\'', "''"), self.factor)
            }
        }
    }
}

/// A keyspace name CQL takes unquoted.
pub fn check_keyspace(name: &str) -> Result<(), SchemaError> {
    let ok = name.len() <= 48
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SchemaError::Keyspace(name.to_string()))
    }
}

/// The statements of a CQL file: comments dropped, split at `;`.
pub fn statements(cql: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';').map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|s| !s.is_empty()).collect()
}

/// Creates the keyspace if missing, uses it, and runs the versions not yet
/// recorded.
pub async fn migrate(session: &Session, keyspace: &str, replication: &Replication) -> Result<(), SchemaError> {
    check_keyspace(keyspace)?;
    let cql = |e: &dyn std::fmt::Display| SchemaError::Cql(e.to_string());
    let create = format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}", replication.cql());
    session.query_unpaged(create, ()).await.map_err(|e| cql(&e))?;
    session.use_keyspace(keyspace, false).await.map_err(|e| cql(&e))?;
    let table = "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text)";
    session.query_unpaged(table, ()).await.map_err(|e| cql(&e))?;
    let applied: Vec<i32> = session
        .query_unpaged("SELECT version FROM schema_migrations", ())
        .await
        .map_err(|e| cql(&e))?
        .into_rows_result()
        .map_err(|e| cql(&e))?
        .rows::<(i32,)>()
        .map_err(|e| cql(&e))?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| cql(&e))?;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |e: &dyn std::fmt::Display| SchemaError::Migration {
            version: m.version,
            name: m.name,
            error: e.to_string(),
        };
        for statement in statements(m.cql) {
            session.query_unpaged(statement, ()).await.map_err(|e| failed(&e))?;
        }
        session
            .query_unpaged("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (m.version, m.name))
            .await
            .map_err(|e| failed(&e))?;
        tracing::info!(version = m.version, name = m.name, "schema version applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_run_in_order_and_every_statement_is_idempotent() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
        for m in MIGRATIONS {
            let all = statements(m.cql);
            assert!(!all.is_empty(), "version {} has statements", m.version);
            for s in all {
                assert!(s.contains(" IF NOT EXISTS "), "version {}: {s}", m.version);
            }
        }
    }

    #[test]
    fn comments_and_semicolons_split_a_file() {
        let cql = "-- a table; not a statement\nCREATE TABLE IF NOT EXISTS a (k int PRIMARY KEY); -- trailing\n\n  CREATE TABLE IF NOT EXISTS b (\n k int PRIMARY KEY\n);\n";
        assert_eq!(
            statements(cql),
            ["CREATE TABLE IF NOT EXISTS a (k int PRIMARY KEY)", "CREATE TABLE IF NOT EXISTS b ( k int PRIMARY KEY )"]
        );
    }

    #[test]
    fn every_statement_names_a_table_the_schema_creates() {
        let created: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m.cql))
            .filter_map(|s| {
                s.strip_prefix("CREATE TABLE IF NOT EXISTS ").map(|r| r.split(' ').next().unwrap().to_string())
            })
            .collect();
        for (name, text) in super::super::session::statements() {
            let words: Vec<&str> = text.split_whitespace().collect();
            let table = words
                .windows(2)
                .find(|w| matches!(w[0], "FROM" | "INTO" | "UPDATE"))
                .map(|w| w[1])
                .or_else(|| words.first().filter(|w| **w == "UPDATE").and(words.get(1).copied()))
                .unwrap_or_else(|| panic!("{name}: no table in {text}"));
            assert!(created.iter().any(|c| c == table), "{name} uses {table}, which no version creates");
        }
    }

    #[test]
    fn keyspace_names_and_replication() {
        assert!(check_keyspace("confab").is_ok());
        assert!(check_keyspace("confab_2").is_ok());
        for bad in ["", "Confab", "2x", "a-b", "x;DROP", &"k".repeat(49)] {
            assert!(check_keyspace(bad).is_err(), "{bad}");
        }
        let simple = Replication { factor: 3, datacenter: None };
        assert_eq!(simple.cql(), "{'class': 'SimpleStrategy', 'replication_factor': 3}");
        let dc = Replication { factor: 3, datacenter: Some("eu-1".into()) };
        assert_eq!(dc.cql(), "{'class': 'NetworkTopologyStrategy', 'eu-1': 3}");
    }
}
