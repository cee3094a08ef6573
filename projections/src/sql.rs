//! [`Sql`]: one statement and its bound values, built the same way for every [`Backend`].
//!
//! It plays the part of sqlx's `query(...).bind(...)` and `QueryBuilder` in generic code,
//! binding through [`Bind`] so that `DB: Backend` is the only bound a query needs. A value
//! that fails to encode fails the statement when it runs, as it does in sqlx.

use sqlx::error::BoxDynError;
use sqlx::{Arguments, AssertSqlSafe};

use crate::backend::{Backend, Bind, Executes};

/// A statement being built: its text and the values bound to its placeholders so far.
pub struct Sql<DB: Backend> {
    text: String,
    arguments: DB::Arguments,
    bind_error: Option<BoxDynError>,
}

impl<DB: Backend> Sql<DB> {
    pub fn new(text: impl Into<String>) -> Sql<DB> {
        Sql {
            text: text.into(),
            arguments: DB::Arguments::default(),
            bind_error: None,
        }
    }

    /// Binds `value` to the next placeholder already written in the text.
    pub fn bind<T>(mut self, value: T) -> Sql<DB>
    where
        DB::Arguments: Bind<T>,
    {
        self.add(value);
        self
    }

    /// Appends `text` as it is. Never pass it a value: bind values.
    pub fn push(&mut self, text: &str) -> &mut Sql<DB> {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder and binds `value` to it.
    pub fn push_bind<T>(&mut self, value: T) -> &mut Sql<DB>
    where
        DB::Arguments: Bind<T>,
    {
        // Writing to a String cannot fail.
        let _ = self.arguments.format_placeholder(&mut self.text);
        self.add(value);
        self
    }

    /// Appends `(?, ?, ...)` with one bound value per item of `values`.
    pub fn push_list<T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Sql<DB>
    where
        DB::Arguments: Bind<T>,
    {
        self.text.push('(');
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                self.text.push_str(", ");
            }
            self.push_bind(value);
        }
        self.text.push(')');
        self
    }

    /// Appends `VALUES (...), (...)`: one tuple per row, whose values `bind_row` binds.
    pub fn push_values<R>(
        &mut self,
        rows: &[R],
        mut bind_row: impl FnMut(&mut Tuple<'_, DB>, &R),
    ) -> &mut Sql<DB> {
        self.text.push_str("VALUES ");
        for (index, row) in rows.iter().enumerate() {
            if index > 0 {
                self.text.push_str(", ");
            }
            self.text.push('(');
            bind_row(
                &mut Tuple {
                    sql: self,
                    empty: true,
                },
                row,
            );
            self.text.push(')');
        }
        self
    }

    pub async fn execute(self, conn: &mut DB::Connection) -> Result<DB::QueryResult, sqlx::Error> {
        let (text, arguments) = self.into_parts()?;
        sqlx::query_with(AssertSqlSafe(text), arguments)
            .execute(conn.executor())
            .await
    }

    pub async fn fetch_one(self, conn: &mut DB::Connection) -> Result<DB::Row, sqlx::Error> {
        let (text, arguments) = self.into_parts()?;
        sqlx::query_with(AssertSqlSafe(text), arguments)
            .fetch_one(conn.executor())
            .await
    }

    pub async fn fetch_optional(
        self,
        conn: &mut DB::Connection,
    ) -> Result<Option<DB::Row>, sqlx::Error> {
        let (text, arguments) = self.into_parts()?;
        sqlx::query_with(AssertSqlSafe(text), arguments)
            .fetch_optional(conn.executor())
            .await
    }

    pub async fn fetch_all(self, conn: &mut DB::Connection) -> Result<Vec<DB::Row>, sqlx::Error> {
        let (text, arguments) = self.into_parts()?;
        sqlx::query_with(AssertSqlSafe(text), arguments)
            .fetch_all(conn.executor())
            .await
    }

    fn add<T>(&mut self, value: T)
    where
        DB::Arguments: Bind<T>,
    {
        if self.bind_error.is_none()
            && let Err(error) = self.arguments.bind_value(value)
        {
            self.bind_error = Some(error);
        }
    }

    fn into_parts(self) -> Result<(String, DB::Arguments), sqlx::Error> {
        match self.bind_error {
            Some(error) => Err(sqlx::Error::Encode(error)),
            None => Ok((self.text, self.arguments)),
        }
    }
}

/// One row of a `VALUES` list: each bound value is a column, in order.
pub struct Tuple<'a, DB: Backend> {
    sql: &'a mut Sql<DB>,
    empty: bool,
}

impl<DB: Backend> Tuple<'_, DB> {
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        DB::Arguments: Bind<T>,
    {
        if !self.empty {
            self.sql.text.push_str(", ");
        }
        self.empty = false;
        self.sql.push_bind(value);
        self
    }
}
