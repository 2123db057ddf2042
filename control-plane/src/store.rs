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
//! No sqlx proc-macros (`migrate!`, `derive(FromRow)`): they build the whole
//! SQLite and PostgreSQL stack a second time, for the compiler's host, which
//! cost a first build about a minute (issue 13). [`MIGRATIONS`] lists the
//! files and [`rows!`] writes what the derive would.
//!
//! Database URLs can hold passwords: they are never logged, and errors never
//! repeat them.
//!
//! Every write is cancellation-safe. A handler's future is dropped when its
//! client goes away (the gateway gives up after 5 s), and sqlx leaves a
//! connection inside a transaction when a `begin` is dropped after the
//! database began it; back in the pool, such a connection refused every later
//! write (SQLite: it also kept the write lock). So each write runs to its end
//! on a task of its own (`Store::to_completion`), whether or not anyone
//! still waits for it, and a connection that comes back to the pool inside a
//! transaction anyway is closed, not reused (the pools' `after_release`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Connection as _;
use warden_engine::protocol::ApprovalStatus;

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
    /// The task running a write panicked or was stopped with the runtime.
    #[error("database write did not finish: {0}")]
    Interrupted(String),
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
            Store::Sqlite(pool) => migrator(DatabaseKind::Sqlite).run(pool).await?,
            Store::Postgres(pool) => migrator(DatabaseKind::Postgres).run(pool).await?,
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

    /// Runs `write` on a task of its own and waits for its result. Dropping
    /// the returned future (a client gone, a timeout) does not stop the
    /// write: its transaction commits or rolls back as if awaited, and its
    /// connection goes back to the pool outside any transaction.
    async fn to_completion<T, F, W>(&self, write: W) -> Result<T, StoreError>
    where
        W: FnOnce(Store) -> F,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(write(self.clone()))
            .await
            .map_err(|error| StoreError::Interrupted(error.to_string()))?
    }

    /// Closes every connection, waiting for those in use to be returned.
    /// (For SQLite this also checkpoints the write-ahead log.)
    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }

    /// The PostgreSQL pool, for what only PostgreSQL offers (LISTEN).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(pool) => Some(pool),
        }
    }
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds. The SQL
/// inside must be valid in both dialects (`$N` placeholders work in both).
/// The migrations, in order: (version, description, SQLite text, PostgreSQL
/// text). A test checks this against the files in `migrations/`.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "policy versions",
        include_str!("../migrations/sqlite/0001_policy_versions.sql"),
        include_str!("../migrations/postgres/0001_policy_versions.sql"),
    ),
    (
        2,
        "approvals",
        include_str!("../migrations/sqlite/0002_approvals.sql"),
        include_str!("../migrations/postgres/0002_approvals.sql"),
    ),
    (
        3,
        "sessions",
        include_str!("../migrations/sqlite/0003_sessions.sql"),
        include_str!("../migrations/postgres/0003_sessions.sql"),
    ),
    (
        4,
        "approval requester sub",
        include_str!("../migrations/sqlite/0004_approval_requester_sub.sql"),
        include_str!("../migrations/postgres/0004_approval_requester_sub.sql"),
    ),
    (
        5,
        "machine keys",
        include_str!("../migrations/sqlite/0005_machine_keys.sql"),
        include_str!("../migrations/postgres/0005_machine_keys.sql"),
    ),
    (
        6,
        "issuer keys",
        include_str!("../migrations/sqlite/0006_issuer_keys.sql"),
        include_str!("../migrations/postgres/0006_issuer_keys.sql"),
    ),
    (
        7,
        "one time grants",
        include_str!("../migrations/sqlite/0007_one_time_grants.sql"),
        include_str!("../migrations/postgres/0007_one_time_grants.sql"),
    ),
];

/// The embedded migrations of one backend. Checksums are SHA-384 of the text,
/// as `sqlx::migrate!` made them, so databases it migrated carry on.
fn migrator(kind: DatabaseKind) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match kind {
                DatabaseKind::Sqlite => sqlite,
                DatabaseKind::Postgres => postgres,
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// Declares row structs and implements `sqlx::FromRow` for them by column
/// name, for both databases: what `#[derive(sqlx::FromRow)]` writes.
macro_rules! rows {
    ($(
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    )*) => {$(
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $name
        where
            &'static str: sqlx::ColumnIndex<R>,
            $($ty: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                })
            }
        }
    )*};
}

macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

rows! {
/// A published policy version, without its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PolicyMeta {
    /// 1, 2, 3, ...: allocated when published, never reused.
    pub version: i64,
    /// The publisher's token subject.
    pub author: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Hex SHA-256 of the document text.
    pub sha256: String,
    /// Why it was published.
    pub message: String,
    /// Whether gateways are served this version.
    pub active: bool,
}
}

/// A policy version with its document text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// The metadata.
    pub meta: PolicyMeta,
    /// The YAML text as published.
    pub document: String,
}

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for PolicyVersion
where
    PolicyMeta: sqlx::FromRow<'r, R>,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            meta: PolicyMeta::from_row(row)?,
            document: row.try_get("document")?,
        })
    }
}

/// The columns of [`PolicyMeta`], with `created_at` as RFC 3339 text in both dialects.
const SQLITE_META: &str = "version, author, created_at, sha256, message, active";
const POSTGRES_META: &str = "version, author, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at, \
     sha256, message, active";

rows! {
/// One approval row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    pub id: String,
    /// `pending`, `approved` or `denied`: read it with [`ApprovalRow::stored_status`].
    pub status: String,
    pub mode: String,
    pub issuer: String,
    pub subject: String,
    /// The token's own `sub` ('' when the gateway did not send it).
    pub token_subject: String,
    pub email: Option<String>,
    pub groups_json: String,
    pub provider: String,
    /// '' when the request named no model.
    pub model: String,
    pub route: String,
    pub rule: String,
    pub policy_version: i64,
    pub body_sha256: String,
    pub masked_prompt: String,
    pub approvers_json: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decided_by_issuer: Option<String>,
    pub decided_by_subject: Option<String>,
    pub decided_by_email: Option<String>,
    pub decided_ms: Option<i64>,
    pub reason: Option<String>,
    pub consumed_ms: Option<i64>,
}
}

/// What `POST /v1/approvals` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    /// An approved, unexpired, unconsumed approval with the same binding was consumed.
    Consumed,
    /// A pending (or denied) one with the same binding already exists.
    Existing,
    /// A new pending approval was created.
    Created,
}

/// Who decided an approval.
#[derive(Debug, Clone)]
pub struct Decider {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
}

const APPROVAL_COLUMNS: &str = "id, status, mode, issuer, subject, email, groups_json, provider, \
     model, route, rule, policy_version, body_sha256, masked_prompt, approvers_json, created_ms, \
     expires_ms, decided_by_issuer, decided_by_subject, decided_by_email, decided_ms, reason, \
     consumed_ms, token_subject";

/// How many approvals a list reads at most (newest first).
pub const LIST_LIMIT: i64 = 1000;

/// Marks approval `$2` used at `$1` if its status is `$3` (approved), it is
/// unused and unexpired.
const CONSUME: &str = "UPDATE approvals SET consumed_ms = $1 WHERE id = $2 AND status = $3 \
     AND consumed_ms IS NULL AND expires_ms > $1";

impl ApprovalRow {
    /// The `status` column as the enum: the one place its text is read.
    /// A row stores `pending`, `approved` or `denied` (written as
    /// [`ApprovalStatus::as_str`]; `expired` and `consumed` are derived when
    /// read, [`crate::approvals::status_at`]); any other text reads as pending.
    pub fn stored_status(&self) -> ApprovalStatus {
        match ApprovalStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == self.status)
        {
            Some(status @ (ApprovalStatus::Approved | ApprovalStatus::Denied)) => status,
            _ => ApprovalStatus::Pending,
        }
    }
}

impl Store {
    /// Publishes `document` as the next version (allocated inside the
    /// transaction, so concurrent publishers on any replica get distinct
    /// numbers) and, with `activate`, makes it the active one in the same
    /// transaction.
    pub async fn publish_policy(
        &self,
        author: &str,
        message: &str,
        document: &str,
        sha256: &str,
        activate: bool,
    ) -> Result<PolicyMeta, StoreError> {
        let (author, message) = (author.to_owned(), message.to_owned());
        let (document, sha256) = (document.to_owned(), sha256.to_owned());
        self.to_completion(move |store| async move {
            store
                .publish_policy_now(&author, &message, &document, &sha256, activate)
                .await
        })
        .await
    }

    async fn publish_policy_now(
        &self,
        author: &str,
        message: &str,
        document: &str,
        sha256: &str,
        activate: bool,
    ) -> Result<PolicyMeta, StoreError> {
        let insert =
            "INSERT INTO policy_versions (version, author, sha256, message, document, active) \
             SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4, FALSE FROM policy_versions \
             RETURNING version";
        let version: i64 = match self {
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let version: i64 = sqlx::query_scalar(insert)
                    .bind(author)
                    .bind(sha256)
                    .bind(message)
                    .bind(document)
                    .fetch_one(&mut *tx)
                    .await?;
                if activate {
                    set_active_sqlite(&mut tx, version).await?;
                }
                tx.commit().await?;
                version
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Serializes writers (readers go on): MAX()+1 and the one-active
                // swap are then race-free across replicas.
                sqlx::query("LOCK TABLE policy_versions IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                let version: i64 = sqlx::query_scalar(insert)
                    .bind(author)
                    .bind(sha256)
                    .bind(message)
                    .bind(document)
                    .fetch_one(&mut *tx)
                    .await?;
                if activate {
                    set_active_postgres(&mut tx, version).await?;
                }
                tx.commit().await?;
                version
            }
        };
        self.policy_meta(version)
            .await?
            .ok_or_else(|| StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Makes `version` the only active version. `None` when there is no such version.
    pub async fn activate_policy(&self, version: i64) -> Result<Option<PolicyMeta>, StoreError> {
        self.to_completion(move |store| async move { store.activate_policy_now(version).await })
            .await
    }

    async fn activate_policy_now(&self, version: i64) -> Result<Option<PolicyMeta>, StoreError> {
        let found = match self {
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let found = set_active_sqlite(&mut tx, version).await?;
                tx.commit().await?;
                found
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("LOCK TABLE policy_versions IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                let found = set_active_postgres(&mut tx, version).await?;
                tx.commit().await?;
                found
            }
        };
        if !found {
            return Ok(None);
        }
        self.policy_meta(version).await
    }

    /// Every version, newest first.
    pub async fn list_policies(&self) -> Result<Vec<PolicyMeta>, StoreError> {
        let rows = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(&format!(
                    "SELECT {SQLITE_META} FROM policy_versions ORDER BY version DESC"
                ))
                .fetch_all(pool)
                .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_as(&format!(
                    "SELECT {POSTGRES_META} FROM policy_versions ORDER BY version DESC"
                ))
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// One version's metadata.
    pub async fn policy_meta(&self, version: i64) -> Result<Option<PolicyMeta>, StoreError> {
        Ok(self.policy(version).await?.map(|p| p.meta))
    }

    /// One version with its document.
    pub async fn policy(&self, version: i64) -> Result<Option<PolicyVersion>, StoreError> {
        self.policy_where("version = $1", Some(version)).await
    }

    /// The active version, if any.
    pub async fn active_policy(&self) -> Result<Option<PolicyVersion>, StoreError> {
        self.policy_where("active", None).await
    }

    async fn policy_where(
        &self,
        condition: &str,
        version: Option<i64>,
    ) -> Result<Option<PolicyVersion>, StoreError> {
        let row = match self {
            Store::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {SQLITE_META}, document FROM policy_versions WHERE {condition}"
                );
                let mut query = sqlx::query_as(&sql);
                if let Some(version) = version {
                    query = query.bind(version);
                }
                query.fetch_optional(pool).await?
            }
            Store::Postgres(pool) => {
                let sql = format!(
                    "SELECT {POSTGRES_META}, document FROM policy_versions WHERE {condition}"
                );
                let mut query = sqlx::query_as(&sql);
                if let Some(version) = version {
                    query = query.bind(version);
                }
                query.fetch_optional(pool).await?
            }
        };
        Ok(row)
    }

    /// `POST /v1/approvals` in one transaction: consume an approved,
    /// unexpired, unused approval with the same binding; else return a pending
    /// or denied one; else create `new`.
    pub async fn open_approval(
        &self,
        new: ApprovalRow,
        now_ms: i64,
    ) -> Result<(ApprovalRow, OpenOutcome), StoreError> {
        self.to_completion(move |store| async move { store.open_approval_now(&new, now_ms).await })
            .await
    }

    async fn open_approval_now(
        &self,
        new: &ApprovalRow,
        now_ms: i64,
    ) -> Result<(ApprovalRow, OpenOutcome), StoreError> {
        // PostgreSQL text cannot hold NUL: the binding key is a JSON array.
        let binding = serde_json::json!([
            new.issuer,
            new.subject,
            new.body_sha256,
            new.rule,
            new.provider,
            new.model,
            new.route,
            new.policy_version
        ])
        .to_string();
        let find = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE issuer = $1 AND subject = $2 \
             AND body_sha256 = $3 AND rule = $4 AND provider = $5 AND model = $6 \
             AND policy_version = $7 AND route = $8 AND expires_ms > $9 ORDER BY created_ms DESC"
        );
        on_pool!(self, pool => {
            let mut tx = match self {
                Store::Sqlite(_) => pool.begin_with("BEGIN IMMEDIATE").await?,
                Store::Postgres(_) => pool.begin().await?,
            };
            if self.kind() == DatabaseKind::Postgres {
                // Two replicas opening the same binding at once would both
                // find nothing and both create: serialize per binding.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(&binding)
                    .execute(&mut *tx)
                    .await?;
            }
            let rows: Vec<ApprovalRow> = sqlx::query_as(&find)
                .bind(&new.issuer)
                .bind(&new.subject)
                .bind(&new.body_sha256)
                .bind(&new.rule)
                .bind(&new.provider)
                .bind(&new.model)
                .bind(new.policy_version)
                .bind(&new.route)
                .bind(now_ms)
                .fetch_all(&mut *tx)
                .await?;
            let approved = |r: &&ApprovalRow| {
                r.stored_status() == ApprovalStatus::Approved && r.consumed_ms.is_none()
            };
            for row in rows.iter().filter(approved) {
                let done = sqlx::query(CONSUME)
                    .bind(now_ms)
                    .bind(&row.id)
                    .bind(ApprovalStatus::Approved.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done == 1 {
                    tx.commit().await?;
                    let mut row = row.clone();
                    row.consumed_ms = Some(now_ms);
                    return Ok((row, OpenOutcome::Consumed));
                }
            }
            let with = |status: ApprovalStatus| {
                rows.iter().find(move |r| r.stored_status() == status)
            };
            let existing = with(ApprovalStatus::Pending).or_else(|| with(ApprovalStatus::Denied));
            if let Some(row) = existing {
                tx.commit().await?;
                return Ok((row.clone(), OpenOutcome::Existing));
            }
            sqlx::query(&format!(
                "INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                 $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
            ))
            .bind(&new.id)
            .bind(&new.status)
            .bind(&new.mode)
            .bind(&new.issuer)
            .bind(&new.subject)
            .bind(&new.email)
            .bind(&new.groups_json)
            .bind(&new.provider)
            .bind(&new.model)
            .bind(&new.route)
            .bind(&new.rule)
            .bind(new.policy_version)
            .bind(&new.body_sha256)
            .bind(&new.masked_prompt)
            .bind(&new.approvers_json)
            .bind(new.created_ms)
            .bind(new.expires_ms)
            .bind(&new.decided_by_issuer)
            .bind(&new.decided_by_subject)
            .bind(&new.decided_by_email)
            .bind(new.decided_ms)
            .bind(&new.reason)
            .bind(new.consumed_ms)
            .bind(&new.token_subject)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((new.clone(), OpenOutcome::Created))
        })
    }

    /// One approval by id.
    pub async fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1");
        let row = on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        Ok(row)
    }

    /// The newest approvals (at most [`LIST_LIMIT`]).
    pub async fn recent_approvals(&self) -> Result<Vec<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals ORDER BY created_ms DESC, id LIMIT $1"
        );
        let rows =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(LIST_LIMIT).fetch_all(pool).await?);
        Ok(rows)
    }

    /// Records a decision if the approval is still pending and unexpired.
    /// Returns whether this call decided it (exactly one concurrent caller does).
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &Decider,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE approvals SET status = $1, decided_by_issuer = $2, \
             decided_by_subject = $3, decided_by_email = $4, decided_ms = $5, reason = $6 \
             WHERE id = $7 AND status = $8 AND expires_ms > $5";
        let status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        let (id, by, reason) = (id.to_owned(), by.clone(), reason.map(str::to_owned));
        self.to_completion(move |store| async move {
            let done = on_pool!(&store, pool => sqlx::query(sql)
                .bind(status.as_str())
                .bind(&by.issuer)
                .bind(&by.subject)
                .bind(&by.email)
                .bind(now_ms)
                .bind(&reason)
                .bind(&id)
                .bind(ApprovalStatus::Pending.as_str())
                .execute(pool)
                .await?
                .rows_affected());
            Ok(done == 1)
        })
        .await
    }

    /// Marks an approved, unexpired, unused approval as used. Returns whether
    /// this call did (exactly one concurrent caller does).
    pub async fn consume_approval(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.to_completion(move |store| async move {
            let done = on_pool!(&store, pool => sqlx::query(CONSUME)
                .bind(now_ms)
                .bind(&id)
                .bind(ApprovalStatus::Approved.as_str())
                .execute(pool)
                .await?
                .rows_affected());
            Ok(done == 1)
        })
        .await
    }
}

/// A recorded session to append: the gateway's record as canonical JSON text,
/// with the columns lists filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The gateway's unique id for the record (at most 128 characters).
    pub id: String,
    /// The record's `subject`, or "".
    pub subject: String,
    /// The record's `decision`, or "".
    pub decision: String,
    /// The record as canonical JSON (keys sorted); what the hash covers.
    pub record: String,
}

rows! {
/// One stored session row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Position in the chain: 1, 2, 3, ...
    pub seq: i64,
    /// The gateway's id.
    pub id: String,
    /// When the control plane stored it, RFC 3339 UTC.
    pub received_at: String,
    /// The record's subject.
    pub subject: String,
    /// The record's decision.
    pub decision: String,
    /// The record's canonical JSON text.
    pub record: String,
    /// The previous row's hash (64 zeros for the first).
    pub prev_hash: String,
    /// `sha256_hex(prev_hash || "\n" || record)`.
    pub hash: String,
}

/// What the chain check reads of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    /// Position in the chain.
    pub seq: i64,
    /// The record text the hash covers.
    pub record: String,
    /// The stored link to the previous row.
    pub prev_hash: String,
    /// The stored hash.
    pub hash: String,
}
}

const SESSION_COLUMNS: &str = "seq, id, received_at, subject, decision, record, prev_hash, hash";

impl Store {
    /// Appends `records` to the session chain in one transaction that holds
    /// the table against other writers (SQLite: `BEGIN IMMEDIATE`;
    /// PostgreSQL: `LOCK TABLE … IN EXCLUSIVE MODE`, readers still read), so
    /// concurrent batches, from any replica, extend one chain and never fork
    /// it. Ids already stored (gateways retry batches) and repeats within the
    /// batch are skipped. Returns how many were stored and the chain's last
    /// `seq` afterwards (0 when empty).
    pub async fn append_sessions(
        &self,
        records: Vec<NewSession>,
        received_at: &str,
    ) -> Result<(usize, i64), StoreError> {
        let received_at = received_at.to_owned();
        self.to_completion(move |store| async move {
            store.append_sessions_now(&records, &received_at).await
        })
        .await
    }

    async fn append_sessions_now(
        &self,
        records: &[NewSession],
        received_at: &str,
    ) -> Result<(usize, i64), StoreError> {
        let insert = format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        on_pool!(self, pool => {
            let mut tx = match self {
                Store::Sqlite(_) => pool.begin_with("BEGIN IMMEDIATE").await?,
                Store::Postgres(_) => pool.begin().await?,
            };
            if self.kind() == DatabaseKind::Postgres {
                // EXCLUSIVE conflicts with every writer but not with plain SELECTs.
                sqlx::query("LOCK TABLE sessions IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let tail: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM sessions ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            let (mut seq, mut prev_hash) =
                tail.unwrap_or_else(|| (0, crate::chain::GENESIS_HASH.to_owned()));
            let mut seen = std::collections::HashSet::new();
            let mut stored = 0;
            for record in records {
                if !seen.insert(record.id.as_str()) {
                    continue;
                }
                let exists: Option<i64> = sqlx::query_scalar("SELECT seq FROM sessions WHERE id = $1")
                    .bind(&record.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_some() {
                    continue;
                }
                seq += 1;
                let hash = crate::chain::chain_hash(&prev_hash, &record.record);
                sqlx::query(&insert)
                    .bind(seq)
                    .bind(&record.id)
                    .bind(received_at)
                    .bind(&record.subject)
                    .bind(&record.decision)
                    .bind(&record.record)
                    .bind(&prev_hash)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                prev_hash = hash;
                stored += 1;
            }
            tx.commit().await?;
            Ok((stored, seq))
        })
    }

    /// Sessions newest first: at most `limit`, only `subject`'s when given,
    /// only those before `before_seq` when given (the next page).
    pub async fn list_sessions(
        &self,
        subject: Option<&str>,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ($1 IS NULL OR subject = $1) \
             AND ($2 IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3"
        );
        let rows = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(subject)
            .bind(before_seq)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        Ok(rows)
    }

    /// One session by the gateway's id.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        Ok(row)
    }

    /// The chain in `seq` order after `after_seq`, at most `limit` rows: the
    /// chain check reads it page by page, never all at once.
    pub async fn session_chain_page(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let sql = "SELECT seq, record, prev_hash, hash FROM sessions WHERE seq > $1 \
                   ORDER BY seq LIMIT $2";
        let rows = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        Ok(rows)
    }

    /// The `seq` of a row whose stored hash is `hash`, if any.
    pub async fn session_seq_by_hash(&self, hash: &str) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT seq FROM sessions WHERE hash = $1 ORDER BY seq LIMIT 1";
        let seq = on_pool!(self, pool => sqlx::query_scalar(sql)
            .bind(hash)
            .fetch_optional(pool)
            .await?);
        Ok(seq)
    }
}

/// Makes `version` the one active row; false if it does not exist (nothing changes then).
async fn set_active_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    version: i64,
) -> Result<bool, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT version FROM policy_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut **tx)
            .await?;
    if exists.is_none() {
        return Ok(false);
    }
    sqlx::query("UPDATE policy_versions SET active = FALSE WHERE active AND version <> $1")
        .bind(version)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE policy_versions SET active = TRUE WHERE version = $1")
        .bind(version)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// [`set_active_sqlite`] for PostgreSQL (same SQL, another connection type).
async fn set_active_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    version: i64,
) -> Result<bool, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT version FROM policy_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut **tx)
            .await?;
    if exists.is_none() {
        return Ok(false);
    }
    sqlx::query("UPDATE policy_versions SET active = FALSE WHERE active AND version <> $1")
        .bind(version)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE policy_versions SET active = TRUE WHERE version = $1")
        .bind(version)
        .execute(&mut **tx)
        .await?;
    // Delivered on commit (and not at all on rollback) to every replica's
    // watchers (`policy_watch::listen_postgres`).
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(crate::policy_watch::NOTIFY_CHANNEL)
        .bind(version.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

rows! {
/// One machine key as stored (its hash, never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineKeyRow {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub owner_sub: String,
    pub groups_json: String,
    pub models_json: String,
    pub sha256: String,
    pub created_by: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub replaces: Option<String>,
}
}

/// The columns of [`MachineKeyRow`] (a macro, so [`MACHINE_KEY_BY_ID`] is a constant too).
macro_rules! machine_key_columns {
    () => {
        "id, name, owner, owner_sub, groups_json, models_json, sha256, \
         created_by, created_ms, expires_ms, revoked_ms, revoked_by, replaces"
    };
}
const MACHINE_KEY_COLUMNS: &str = machine_key_columns!();
/// One key by id (`$1`).
const MACHINE_KEY_BY_ID: &str = concat!(
    "SELECT ",
    machine_key_columns!(),
    " FROM machine_keys WHERE id = $1"
);

/// What [`Store::revoke_machine_key`] and [`Store::rotate_machine_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    Done(MachineKeyRow),
    NoSuchKey,
    /// Revoked before (revoking again changes nothing; rotating is refused).
    AlreadyRevoked(MachineKeyRow),
}

impl Store {
    /// Stores a newly issued key. Gateways are told on commit (PostgreSQL:
    /// every replica's watchers; this replica's are woken by the caller).
    pub async fn insert_machine_key(&self, row: MachineKeyRow) -> Result<(), StoreError> {
        self.to_completion(move |store| async move {
            on_pool!(&store, pool => {
                let mut tx = pool.begin().await?;
                tx.insert_key(&row).await?;
                tx.keys_changed().await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// One key, revoked or not.
    pub async fn machine_key(&self, id: &str) -> Result<Option<MachineKeyRow>, StoreError> {
        Ok(
            on_pool!(self, pool => sqlx::query_as(MACHINE_KEY_BY_ID).bind(id).fetch_optional(pool).await?),
        )
    }

    /// Keys newest first (at most [`LIST_LIMIT`]), only `owner`'s when given.
    pub async fn list_machine_keys(
        &self,
        owner: Option<&str>,
    ) -> Result<Vec<MachineKeyRow>, StoreError> {
        let filter = if owner.is_some() {
            "WHERE owner = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {MACHINE_KEY_COLUMNS} FROM machine_keys {filter} \
             ORDER BY created_ms DESC, id LIMIT {LIST_LIMIT}"
        );
        Ok(on_pool!(self, pool => {
            let mut query = sqlx::query_as(&sql);
            if let Some(owner) = owner {
                query = query.bind(owner);
            }
            query.fetch_all(pool).await?
        }))
    }

    /// Keys neither revoked nor expired at `now_ms`, ordered by id (so the
    /// same set always reads the same): what gateways are served.
    pub async fn live_machine_keys(&self, now_ms: i64) -> Result<Vec<MachineKeyRow>, StoreError> {
        let sql = format!(
            "SELECT {MACHINE_KEY_COLUMNS} FROM machine_keys \
             WHERE revoked_ms IS NULL AND expires_ms > $1 ORDER BY id"
        );
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(now_ms).fetch_all(pool).await?))
    }

    /// How many live keys `owner` has at `now_ms`.
    pub async fn live_machine_keys_of(&self, owner: &str, now_ms: i64) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM machine_keys \
             WHERE owner = $1 AND revoked_ms IS NULL AND expires_ms > $2";
        Ok(
            on_pool!(self, pool => sqlx::query_scalar(sql).bind(owner).bind(now_ms).fetch_one(pool).await?),
        )
    }

    /// Revokes key `id` at `now_ms`, by `by`.
    pub async fn revoke_machine_key(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<KeyChange, StoreError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        self.to_completion(move |store| async move {
            on_pool!(&store, pool => {
                let mut tx = pool.begin().await?;
                let found: Option<MachineKeyRow> =
                    sqlx::query_as(MACHINE_KEY_BY_ID).bind(&id).fetch_optional(&mut *tx).await?;
                let Some(mut key) = found else {
                    return Ok(KeyChange::NoSuchKey);
                };
                if key.revoked_ms.is_some() {
                    return Ok(KeyChange::AlreadyRevoked(key));
                }
                sqlx::query("UPDATE machine_keys SET revoked_ms = $1, revoked_by = $2 WHERE id = $3")
                    .bind(now_ms)
                    .bind(&by)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                tx.keys_changed().await?;
                tx.commit().await?;
                key.revoked_ms = Some(now_ms);
                key.revoked_by = Some(by);
                Ok(KeyChange::Done(key))
            })
        })
        .await
    }

    /// Revokes every live key of `owner` at `now_ms` (someone who left):
    /// how many were.
    pub async fn revoke_machine_keys_of(
        &self,
        owner: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (owner, by) = (owner.to_owned(), by.to_owned());
        self.to_completion(move |store| async move {
            on_pool!(&store, pool => {
                let mut tx = pool.begin().await?;
                let done = sqlx::query(
                    "UPDATE machine_keys SET revoked_ms = $1, revoked_by = $2 \
                     WHERE owner = $3 AND revoked_ms IS NULL AND expires_ms > $1",
                )
                .bind(now_ms)
                .bind(&by)
                .bind(&owner)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() > 0 {
                    tx.keys_changed().await?;
                }
                tx.commit().await?;
                Ok(done.rows_affected())
            })
        })
        .await
    }

    /// Issues `new` in place of key `new.replaces`, which then expires at
    /// `old_until_ms` (or earlier, if it already would), in one transaction.
    pub async fn rotate_machine_key(
        &self,
        new: MachineKeyRow,
        old_until_ms: i64,
    ) -> Result<KeyChange, StoreError> {
        self.to_completion(move |store| async move {
            let old_id = new.replaces.clone().unwrap_or_default();
            on_pool!(&store, pool => {
                let mut tx = pool.begin().await?;
                let found: Option<MachineKeyRow> =
                    sqlx::query_as(MACHINE_KEY_BY_ID).bind(&old_id).fetch_optional(&mut *tx).await?;
                let Some(old) = found else {
                    return Ok(KeyChange::NoSuchKey);
                };
                if old.revoked_ms.is_some() {
                    return Ok(KeyChange::AlreadyRevoked(old));
                }
                sqlx::query("UPDATE machine_keys SET expires_ms = $1 WHERE id = $2 AND expires_ms > $1")
                    .bind(old_until_ms)
                    .bind(&old_id)
                    .execute(&mut *tx)
                    .await?;
                tx.insert_key(&new).await?;
                tx.keys_changed().await?;
                tx.commit().await?;
                Ok(KeyChange::Done(new))
            })
        })
        .await
    }
}

const INSERT_MACHINE_KEY: &str = "INSERT INTO machine_keys (id, name, owner, owner_sub, \
     groups_json, models_json, sha256, created_by, created_ms, expires_ms, replaces) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The writes of machine keys that differ between the backends: the same
/// insert on two connection types, and telling every replica's gateways.
trait KeyTransaction {
    async fn insert_key(&mut self, row: &MachineKeyRow) -> Result<(), StoreError>;
    /// Wakes the policy watchers of every replica on commit (PostgreSQL's
    /// NOTIFY; SQLite has one replica, whose watchers the API wakes).
    async fn keys_changed(&mut self) -> Result<(), StoreError>;
}

macro_rules! insert_key {
    ($tx:expr, $row:expr) => {{
        let row = $row;
        sqlx::query(INSERT_MACHINE_KEY)
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.owner)
            .bind(&row.owner_sub)
            .bind(&row.groups_json)
            .bind(&row.models_json)
            .bind(&row.sha256)
            .bind(&row.created_by)
            .bind(row.created_ms)
            .bind(row.expires_ms)
            .bind(&row.replaces)
            .execute(&mut **$tx)
            .await?;
        Ok(())
    }};
}

impl KeyTransaction for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn insert_key(&mut self, row: &MachineKeyRow) -> Result<(), StoreError> {
        insert_key!(self, row)
    }
    async fn keys_changed(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl KeyTransaction for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn insert_key(&mut self, row: &MachineKeyRow) -> Result<(), StoreError> {
        insert_key!(self, row)
    }
    async fn keys_changed(&mut self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, 'machine keys')")
            .bind(crate::policy_watch::NOTIFY_CHANNEL)
            .execute(&mut **self)
            .await?;
        Ok(())
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
        .after_release(|conn, _| {
            Box::pin(async move {
                // The ping runs after any rollback a dropped `Transaction`
                // queued; a transaction still counted then has no owner left
                // (a `begin` dropped once SQLite had begun it).
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        })
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
        .after_release(|conn, _| Box::pin(postgres_reusable(conn)))
        .connect_with(options)
        .await
        .map_err(connect_error)
}

/// Whether a PostgreSQL connection returned to the pool is outside any
/// transaction. sqlx counts a transaction only once the server answered its
/// BEGIN, so this asks the server: a simple query (no Parse/Bind, which
/// restart `statement_timestamp`) outside a transaction block is the first
/// statement of its own transaction, and the two times are equal; inside a
/// block, the block began earlier.
async fn postgres_reusable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Executor as _;
    // Through `Executor` (a boxed future): `RawSql::fetch_one`'s own future
    // trips rustc's Send check in the pool's higher-ranked callback.
    let row = (&mut *conn)
        .fetch_one(sqlx::raw_sql(
            "SELECT transaction_timestamp() = statement_timestamp()",
        ))
        .await?;
    let outside: bool = sqlx::Row::try_get(&row, 0)?;
    Ok(outside && !conn.is_in_transaction())
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
    fn embedded_migrations_are_the_files_in_migrations() {
        for (dir, pick) in [("sqlite", 2usize), ("postgres", 3)] {
            let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&folder)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            assert_eq!(files.len(), MIGRATIONS.len(), "{dir}: {files:?}");
            for (file, migration) in files.iter().zip(MIGRATIONS) {
                let (version, rest) = file.split_once('_').unwrap();
                let description = rest.trim_end_matches(".sql").replace('_', " ");
                assert_eq!(version.parse::<i64>().unwrap(), migration.0, "{file}");
                assert_eq!(description, migration.1, "{file}");
                let text = std::fs::read_to_string(folder.join(file)).unwrap();
                let embedded = if pick == 2 { migration.2 } else { migration.3 };
                assert_eq!(text, embedded, "{file}");
            }
        }
    }

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

rows! {
/// A generation of an issuer's keys ([`crate::key_rotation`]). The PEM text
/// is private key material: this type is never printed.
#[derive(Clone)]
pub struct IssuerKeyRow {
    /// 1, 2, 3, …
    pub generation: i64,
    /// PKCS#8 RSA 2048.
    pub rs256_pem: String,
    /// PKCS#8 P-256.
    pub es256_pem: String,
    /// PKCS#8 Ed25519.
    pub ed25519_pem: String,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
}
}

impl std::fmt::Debug for IssuerKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeyRow")
            .field("generation", &self.generation)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The newest `limit` generations of `issuer`'s keys, newest first.
    pub async fn issuer_keys(
        &self,
        issuer: &str,
        limit: i64,
    ) -> Result<Vec<IssuerKeyRow>, StoreError> {
        let sql = "SELECT generation, rs256_pem, es256_pem, ed25519_pem, created_ms \
                   FROM issuer_keys WHERE issuer = $1 ORDER BY generation DESC LIMIT $2";
        Ok(
            on_pool!(self, pool => sqlx::query_as(sql).bind(issuer).bind(limit).fetch_all(pool).await?),
        )
    }

    /// Adds generation `row.generation` of `issuer`'s keys; `false` when
    /// another replica added that generation first (then use theirs).
    pub async fn add_issuer_keys(
        &self,
        issuer: &str,
        row: IssuerKeyRow,
    ) -> Result<bool, StoreError> {
        let issuer = issuer.to_owned();
        self.to_completion(move |store| async move {
            let sql = "INSERT INTO issuer_keys \
                       (issuer, generation, rs256_pem, es256_pem, ed25519_pem, created_ms) \
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (issuer, generation) DO NOTHING";
            let inserted = on_pool!(&store, pool => sqlx::query(sql)
                .bind(&issuer)
                .bind(row.generation)
                .bind(&row.rs256_pem)
                .bind(&row.es256_pem)
                .bind(&row.ed25519_pem)
                .bind(row.created_ms)
                .execute(pool)
                .await?
                .rows_affected());
            Ok(inserted == 1)
        })
        .await
    }
}

impl Store {
    /// Keeps a one-time grant (`one_time_grants`) under `hash` until
    /// `expires_ms`, first dropping every grant expired at `now_ms`; `false`
    /// when `hash` is already there (a SAML message seen before). With
    /// `keep_at_most`, the grants of `kind` that expire first go beyond that
    /// many (what anyone can create must not fill the database).
    pub async fn put_grant(
        &self,
        hash: &str,
        kind: &str,
        payload: &str,
        expires_ms: i64,
        now_ms: i64,
        keep_at_most: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (hash, kind, payload) = (hash.to_owned(), kind.to_owned(), payload.to_owned());
        self.to_completion(move |store| async move {
            let inserted = on_pool!(&store, pool => {
                sqlx::query("DELETE FROM one_time_grants WHERE expires_ms <= $1")
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
                let inserted = sqlx::query(
                    "INSERT INTO one_time_grants (hash, kind, payload, expires_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
                )
                .bind(&hash)
                .bind(&kind)
                .bind(&payload)
                .bind(expires_ms)
                .execute(pool)
                .await?
                .rows_affected();
                if let Some(most) = keep_at_most {
                    // LIMIT with a huge count: both dialects need one with OFFSET.
                    sqlx::query(
                        "DELETE FROM one_time_grants WHERE kind = $1 AND hash IN \
                         (SELECT hash FROM one_time_grants WHERE kind = $1 \
                          ORDER BY expires_ms DESC, hash LIMIT 1000000000 OFFSET $2)",
                    )
                    .bind(&kind)
                    .bind(most)
                    .execute(pool)
                    .await?;
                }
                inserted
            });
            Ok(inserted == 1)
        })
        .await
    }

    /// Takes the grant of `kind` under `hash`: deleted as it is read, so one
    /// caller on one replica gets it. Its payload and expiry (the caller
    /// judges the expiry, to say so).
    pub async fn take_grant(
        &self,
        hash: &str,
        kind: &str,
    ) -> Result<Option<(String, i64)>, StoreError> {
        let (hash, kind) = (hash.to_owned(), kind.to_owned());
        self.to_completion(move |store| async move {
            let sql = "DELETE FROM one_time_grants WHERE hash = $1 AND kind = $2 \
                       RETURNING payload, expires_ms";
            Ok(
                on_pool!(&store, pool => sqlx::query_as::<_, (String, i64)>(sql)
                .bind(&hash)
                .bind(&kind)
                .fetch_optional(pool)
                .await?),
            )
        })
        .await
    }
}
