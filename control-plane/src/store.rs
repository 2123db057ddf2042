//! Storage: SQLite by default, PostgreSQL when asked for.
//!
//! [`Store`] is an enum over the two concrete sqlx pools rather than an
//! `AnyPool`, so each backend keeps its own types and SQL dialect. Code that
//! needs the database matches on it (or, better, calls a method here that
//! does), and both arms are checked by the compiler.
//!
//! Which backend is used is decided by [`DatabaseTarget::resolve`]:
//!
//! * no `--database-url`: SQLite at `<data-dir>/warden.db`, created if missing;
//! * `postgres://…` or `postgresql://…`: PostgreSQL;
//! * `sqlite:…`: SQLite at that location (mostly for tests and tooling).
//!
//! Migrations are embedded at compile time from `migrations/sqlite` and
//! `migrations/postgres` (the SQL differs) and run every time a store opens.
//!
//! Database URLs can hold passwords: they are never logged, and errors never
//! repeat them.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Connection as _;

/// File name of the default SQLite database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "warden.db";

/// How long to keep retrying to reach PostgreSQL at start (it may still be booting
/// when both are started together, e.g. by docker compose).
const POSTGRES_CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// How long a request waits for a free connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long SQLite waits on a locked database before failing a statement.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from opening or using the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `--database-url` names a scheme we do not support.
    #[error(
        "unsupported database URL scheme `{0}` (expected postgres://, postgresql:// or sqlite:)"
    )]
    UnsupportedScheme(String),
    /// The URL could not be parsed by sqlx.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The database could not be reached or opened.
    #[error("cannot connect to the {kind} database: {source}")]
    Connect {
        /// Which backend.
        kind: DatabaseKind,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// Which database backend is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// SQLite (the default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl DatabaseKind {
    /// `"sqlite"` or `"postgres"`, as reported by `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Sqlite => "sqlite",
            DatabaseKind::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the store lives, decided from the command line before connecting.
#[derive(Clone)]
pub enum DatabaseTarget {
    /// A SQLite database file (created if missing).
    SqliteFile(PathBuf),
    /// A `sqlite:` URL given explicitly.
    SqliteUrl(String),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

// Hand-written so a password in a URL never ends up in a log line.
impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseTarget::SqliteFile(path) => f.debug_tuple("SqliteFile").field(path).finish(),
            DatabaseTarget::SqliteUrl(_) => f.write_str("SqliteUrl(..)"),
            DatabaseTarget::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

impl DatabaseTarget {
    /// Chooses the backend: the URL's scheme if one is given, otherwise
    /// SQLite at `<data_dir>/warden.db`.
    pub fn resolve(data_dir: &Path, database_url: Option<&str>) -> Result<Self, StoreError> {
        let Some(url) = database_url.map(str::trim).filter(|url| !url.is_empty()) else {
            return Ok(DatabaseTarget::SqliteFile(data_dir.join(SQLITE_FILE_NAME)));
        };
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(DatabaseTarget::Postgres(url.to_owned())),
            "sqlite" => Ok(DatabaseTarget::SqliteUrl(url.to_owned())),
            _ => Err(StoreError::UnsupportedScheme(scheme.to_owned())),
        }
    }

    /// The backend this target selects.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            DatabaseTarget::SqliteFile(_) | DatabaseTarget::SqliteUrl(_) => DatabaseKind::Sqlite,
            DatabaseTarget::Postgres(_) => DatabaseKind::Postgres,
        }
    }
}

/// The control plane's database: a connection pool for one of the backends.
///
/// Cloning is cheap (the pools are reference-counted).
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Store {
    /// Connects to `target` and brings its schema up to date.
    pub async fn open(target: &DatabaseTarget) -> Result<Self, StoreError> {
        let store = match target {
            DatabaseTarget::SqliteFile(path) => {
                let options = SqliteConnectOptions::new().filename(path);
                Store::Sqlite(connect_sqlite(options).await?)
            }
            DatabaseTarget::SqliteUrl(url) => {
                let options =
                    SqliteConnectOptions::from_str(url).map_err(StoreError::InvalidUrl)?;
                Store::Sqlite(connect_sqlite(options).await?)
            }
            DatabaseTarget::Postgres(url) => {
                let options = PgConnectOptions::from_str(url).map_err(StoreError::InvalidUrl)?;
                Store::Postgres(connect_postgres(options).await?)
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which backend this store uses.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Store::Sqlite(_) => DatabaseKind::Sqlite,
            Store::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Store::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => {
                sqlx::query("SELECT 1").fetch_one(pool).await?;
            }
            Store::Postgres(pool) => {
                sqlx::query("SELECT 1").fetch_one(pool).await?;
            }
        }
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    /// (For SQLite this also checkpoints the write-ahead log.)
    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

async fn connect_sqlite(options: SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect {
            kind: DatabaseKind::Sqlite,
            source,
        })
}

async fn connect_postgres(options: PgConnectOptions) -> Result<PgPool, StoreError> {
    let connect_error = |source| StoreError::Connect {
        kind: DatabaseKind::Postgres,
        source,
    };
    // Probe with a single connection first: unlike the pool, which reports
    // only "timed out", it fails with the real reason (refused, bad password).
    let deadline = Instant::now() + POSTGRES_CONNECT_DEADLINE;
    let mut delay = Duration::from_millis(250);
    loop {
        match PgConnection::connect_with(&options).await {
            Ok(connection) => {
                // Failing to say goodbye politely is harmless.
                let _ = connection.close().await;
                break;
            }
            Err(error) if is_transient(&error) && Instant::now() + delay < deadline => {
                tracing::warn!(
                    error = %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "PostgreSQL not reachable yet; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            Err(error) => return Err(connect_error(error)),
        }
    }
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(connect_error)
}

/// Errors worth retrying at start: the server is not up (yet), not ones
/// that will never go away such as bad credentials.
fn is_transient(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn target_defaults_to_sqlite_in_the_data_dir() {
        let target = DatabaseTarget::resolve(Path::new("/var/lib/warden"), None).unwrap();
        assert_eq!(target.kind(), DatabaseKind::Sqlite);
        match target {
            DatabaseTarget::SqliteFile(path) => {
                assert_eq!(path, Path::new("/var/lib/warden/warden.db"));
            }
            other => panic!("unexpected target {other:?}"),
        }
        // An empty value (e.g. an empty environment variable) means "not given".
        let target = DatabaseTarget::resolve(Path::new("d"), Some("  ")).unwrap();
        assert_eq!(target.kind(), DatabaseKind::Sqlite);
    }

    #[test]
    fn target_follows_the_url_scheme() {
        for url in [
            "postgres://warden:secret@db:5432/warden",
            "postgresql://localhost/warden",
            "POSTGRES://localhost/warden",
        ] {
            let target = DatabaseTarget::resolve(Path::new("d"), Some(url)).unwrap();
            assert_eq!(target.kind(), DatabaseKind::Postgres, "{url}");
            // The password must not show in debug output.
            assert!(!format!("{target:?}").contains("secret"));
        }
        let target = DatabaseTarget::resolve(Path::new("d"), Some("sqlite::memory:")).unwrap();
        assert_eq!(target.kind(), DatabaseKind::Sqlite);

        let error = DatabaseTarget::resolve(Path::new("d"), Some("mysql://u:secret@h/db"))
            .err()
            .unwrap();
        assert!(matches!(error, StoreError::UnsupportedScheme(ref s) if s == "mysql"));
        assert!(!error.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn sqlite_store_migrates_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let target = DatabaseTarget::resolve(dir.path(), None).unwrap();
        let store = Store::open(&target).await.unwrap();
        assert_eq!(store.kind(), DatabaseKind::Sqlite);
        store.ping().await.unwrap();
        assert!(dir.path().join(SQLITE_FILE_NAME).is_file());

        let Store::Sqlite(pool) = &store else {
            panic!("expected SQLite")
        };
        sqlx::query(
            "INSERT INTO policy_versions (version, author, sha256, message, document, active) \
             VALUES (1, 'alice', 'abc', 'first', 'rules: []', TRUE)",
        )
        .execute(pool)
        .await
        .unwrap();
        // A second active version violates the one-active index.
        let second = sqlx::query(
            "INSERT INTO policy_versions (version, author, sha256, document, active) \
             VALUES (2, 'bob', 'def', 'rules: []', TRUE)",
        )
        .execute(pool)
        .await;
        assert!(second.is_err());
        let created_at: String =
            sqlx::query_scalar("SELECT created_at FROM policy_versions WHERE version = 1")
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(created_at.ends_with('Z'), "{created_at}");
        store.close().await;

        // Opening again re-runs migrations as a no-op and keeps the data.
        let store = Store::open(&target).await.unwrap();
        let Store::Sqlite(pool) = &store else {
            panic!("expected SQLite")
        };
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM policy_versions")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(count, 1);
        store.close().await;
    }
}
