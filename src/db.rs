//! The database handle shared by the stores: SQLite (embedded default) or
//! PostgreSQL, chosen by the URL, through sqlx's `Any` driver so that every
//! store has one set of queries. Queries use `$1` placeholders, which both
//! backends accept (multi-row statements use [`Backend::values`]), and only
//! portable types (TEXT, BIGINT).

use std::fmt::Write;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

/// Which server the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url must start with sqlite: or postgres://")]
    UnknownScheme,
    #[error("could not prepare the SQLite directory {0}")]
    Directory(String, #[source] std::io::Error),
    #[error("could not connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("could not apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl Backend {
    /// The backend of an open connection.
    pub fn of(conn: &sqlx::AnyConnection) -> Self {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    /// The `VALUES` list of a multi-row statement: `rows` rows of `cols`
    /// parameters, bound in order. PostgreSQL gets `($1, $2), ($3, $4)`;
    /// SQLite gets `(?, ?), (?, ?)`, because it finds a numbered parameter by
    /// a linear search of the statement's names, which makes binding and
    /// parsing a statement of many `$n` grow with the square of their count.
    pub fn values(self, rows: usize, cols: usize) -> String {
        let mut sql = String::with_capacity(rows * cols * 5);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for col in 0..cols {
                if col > 0 {
                    sql.push_str(", ");
                }
                match self {
                    // Writing to a String cannot fail.
                    Self::Postgres => drop(write!(sql, "${}", row * cols + col + 1)),
                    Self::Sqlite => sql.push('?'),
                }
            }
            sql.push(')');
        }
        sql
    }
}

/// Splits `items` into runs for multi-row statements: each run's length is a
/// power of two, at most `max`, largest first. A statement then comes in a
/// handful of shapes, each prepared once and kept in the connection's
/// statement cache, instead of a new shape for every batch size.
pub fn runs<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = max.max(1);
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = 1usize << rest.len().min(max).ilog2();
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(run)
    })
}

/// A pool plus the backend it speaks to.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Connects (creating the SQLite file and its directory when missing);
    /// a caller waits at most five seconds for a connection of the pool.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_waiting(url, max_connections, Duration::from_secs(5)).await
    }

    /// Connects as [`Database::connect`]; a caller waits at most `acquire` for a connection.
    pub async fn connect_waiting(url: &str, max_connections: u32, acquire: Duration) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::UnknownScheme);
        };
        if backend == Backend::Sqlite {
            ensure_sqlite_dir(url)?;
        }
        let pool = AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(acquire).connect(url).await.map_err(DbError::Connect)?;
        if backend == Backend::Sqlite && !url.contains(":memory:") {
            // Write-ahead logging: a commit is one append and one fsync (synchronous stays FULL, so a
            // committed turn survives a power cut), and readers never wait for the writer. The mode is
            // kept in the file, so every connection and process that opens it uses it.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await.map_err(DbError::Connect)?;
        }
        Ok(Self { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations of this backend (`migrations/<backend>/`).
    pub async fn migrate(&self) -> Result<(), DbError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&self.pool).await.map_err(DbError::Migrate)
    }

    /// One round trip, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }
}

fn ensure_sqlite_dir(url: &str) -> Result<(), DbError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DbError::Directory(dir.display().to_string(), e))?;
    }
    Ok(())
}

/// RFC 3339 UTC with milliseconds (`2026-11-26T15:08:36.771Z`): the
/// `occurred_at` / `expires_at` form of every event and response.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch, the timestamp type of every table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_number_parameters_for_postgres_and_leave_them_positional_for_sqlite() {
        assert_eq!(Backend::Postgres.values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(Backend::Sqlite.values(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Backend::Sqlite.values(1, 1), "(?)");
    }

    #[test]
    fn runs_cover_every_item_in_order_in_power_of_two_lengths() {
        for n in 0..300usize {
            let items: Vec<usize> = (0..n).collect();
            let runs: Vec<&[usize]> = runs(&items, 128).collect();
            assert!(runs.iter().all(|r| r.len().is_power_of_two() && r.len() <= 128), "n={n}");
            assert!(runs.windows(2).all(|w| w[0].len() >= w[1].len()), "largest first, n={n}");
            assert_eq!(runs.concat(), items, "n={n}");
        }
    }
}
