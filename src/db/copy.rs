//! PostgreSQL's binary `COPY … FROM STDIN` format, for bulk writes of rows the store does not
//! hold yet: rows are encoded here, field by field, and sent through sqlx's `copy_in_raw` in one
//! stream. Binary COPY skips the parsing that text COPY and `UNNEST` arrays cost the server.
//! One-dimensional `int4[]` and `int8[]` fields are written in PostgreSQL's binary array format.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The element types of the arrays written here (`pg_type.oid`): a binary array names its own.
const INT4_OID: i32 = 23;
const INT8_OID: i32 = 20;

/// A place between rows of a [`BinaryRows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    byte: usize,
    rows: usize,
}

/// Rows in binary COPY format, built field by field.
pub struct BinaryRows {
    buf: Vec<u8>,
    rows: usize,
}

impl BinaryRows {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + 19);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        // Flags, then the length of the header extension: none.
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Self { buf, rows: 0 }
    }

    /// Starts a row of `fields` fields; exactly that many must follow.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
        self
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn int2(&mut self, value: i16) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn float8(&mut self, value: f64) -> &mut Self {
        self.field(&value.to_bits().to_be_bytes())
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.field(&[u8::from(value)])
    }

    pub fn timestamptz(&mut self, value: DateTime<Utc>) -> &mut Self {
        self.int8(value.timestamp_micros() - PG_EPOCH_MICROS)
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.as_bytes())
    }

    /// A `jsonb` field: its binary form is a version byte (1) and the JSON text.
    pub fn jsonb(&mut self, value: &serde_json::Value) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0, 1]);
        serde_json::to_writer(&mut self.buf, value).expect("a JSON value always serializes");
        let len = i32::try_from(self.buf.len() - at - 4).unwrap_or(i32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self
    }

    pub fn opt_float8(&mut self, value: Option<f64>) -> &mut Self {
        match value {
            Some(value) => self.float8(value),
            None => self.null(),
        }
    }

    pub fn opt_int8(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.int8(value),
            None => self.null(),
        }
    }

    pub fn opt_int4(&mut self, value: Option<i32>) -> &mut Self {
        match value {
            Some(value) => self.int4(value),
            None => self.null(),
        }
    }

    /// An `int4[]` field: one dimension, lower bound 1 (`{}` when there are no elements).
    pub fn int4_array(&mut self, elements: impl IntoIterator<Item = Option<i32>>) -> &mut Self {
        self.array(INT4_OID, elements, i32::to_be_bytes)
    }

    /// An `int8[]` field: one dimension, lower bound 1 (`{}` when there are no elements).
    pub fn int8_array(&mut self, elements: impl IntoIterator<Item = Option<i64>>) -> &mut Self {
        self.array(INT8_OID, elements, i64::to_be_bytes)
    }

    /// A one-dimensional array field of the type `element_oid`: its length, then the array's
    /// header (dimensions, whether any element is NULL, the element type, and per dimension its
    /// length and lower bound), then each element as a field. The lengths and the NULL flag are
    /// written once the elements have been, so that the elements are only walked once, and
    /// nothing is allocated.
    fn array<T, const N: usize>(
        &mut self,
        element_oid: i32,
        elements: impl IntoIterator<Item = Option<T>>,
        bytes: impl Fn(T) -> [u8; N],
    ) -> &mut Self {
        let at = self.buf.len();
        // Field length, dimensions, has-null flag, element type, length, lower bound.
        for word in [0, 1, 0, element_oid, 0, 1] {
            self.buf.extend_from_slice(&word.to_be_bytes());
        }
        let (mut count, mut nulls) = (0i32, false);
        for element in elements {
            match element {
                Some(value) => {
                    self.field(&bytes(value));
                }
                None => {
                    self.null();
                    nulls = true;
                }
            }
            count = count.saturating_add(1);
        }
        if count == 0 {
            // An empty array has no dimensions, hence no length and lower bound.
            self.buf.truncate(at + 16);
            self.buf[at + 4..at + 8].copy_from_slice(&0i32.to_be_bytes());
        } else {
            self.buf[at + 8..at + 12].copy_from_slice(&i32::from(nulls).to_be_bytes());
            self.buf[at + 16..at + 20].copy_from_slice(&count.to_be_bytes());
        }
        let len = i32::try_from(self.buf.len() - at - 4).unwrap_or(i32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Where the rows so far end: two marks delimit a run of rows for [`BinaryRows::select`].
    pub fn mark(&self) -> Mark {
        Mark {
            byte: self.buf.len(),
            rows: self.rows,
        }
    }

    /// New rows made of the runs `(from, to)` of these, in the order given.
    pub fn select(&self, runs: impl IntoIterator<Item = (Mark, Mark)>) -> Self {
        let mut selected = Self::with_capacity(self.buf.len());
        for (from, to) in runs {
            selected
                .buf
                .extend_from_slice(&self.buf[from.byte..to.byte]);
            selected.rows += to.rows - from.rows;
        }
        selected
    }

    /// Sends the rows with `statement` (`COPY table (columns…) FROM STDIN (FORMAT binary)`);
    /// returns how many PostgreSQL took.
    pub async fn send(mut self, db: &mut PgConnection, statement: &str) -> sqlx::Result<u64> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = db.copy_in_raw(statement).await?;
        if let Err(error) = copy.send(self.buf).await {
            let _ = copy.abort("the rows could not be sent").await;
            return Err(error);
        }
        copy.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_its_field_count_then_each_field_with_its_length() {
        let mut rows = BinaryRows::with_capacity(0);
        rows.row(3).int4(7).null().bool(true);
        let body = &rows.buf[19..];
        assert_eq!(
            body,
            [
                0, 3, 0, 0, 0, 4, 0, 0, 0, 7, 255, 255, 255, 255, 0, 0, 0, 1, 1
            ]
        );
        let mut time = BinaryRows::with_capacity(0);
        let epoch = DateTime::parse_from_rfc3339("2000-01-01T00:00:01Z")
            .expect("a time")
            .to_utc();
        time.row(1).timestamptz(epoch);
        assert_eq!(&time.buf[19 + 2 + 4..], 1_000_000i64.to_be_bytes());
    }

    #[test]
    fn an_array_is_its_header_then_each_element_as_a_field() {
        let mut rows = BinaryRows::with_capacity(0);
        rows.row(2)
            .int4_array([Some(7), None])
            .int8_array([Some(-2)]);
        let body = &rows.buf[19..];
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 2,
            // int4[]: 32 bytes; 1 dimension, a NULL, int4 (23); 2 elements from 1; 7, NULL.
            0, 0, 0, 32,
            0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23, 0, 0, 0, 2, 0, 0, 0, 1,
            0, 0, 0, 4, 0, 0, 0, 7,
            255, 255, 255, 255,
            // int8[]: 32 bytes; 1 dimension, no NULL, int8 (20); 1 element from 1; -2.
            0, 0, 0, 32,
            0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 1,
            0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 254,
        ];
        assert_eq!(body, expected);
        let mut empty = BinaryRows::with_capacity(0);
        empty.row(1).int8_array([]);
        // 12 bytes: no dimensions, no NULL, int8 (20).
        assert_eq!(
            &empty.buf[19..],
            [0, 1, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20]
        );
    }
}
