//! The schema's `DateTime` scalar, as ESI writes times.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, SecondsFormat, Utc};

/// The schema's `DateTime`: written with a fraction of a second only when there is one.
#[derive(Clone, Copy, Debug)]
pub struct EsiTime(pub DateTime<Utc>);

/// A time in UTC as ESI writes it: RFC 3339 with `Z`, like `2021-12-03T00:00:08Z`. Any RFC 3339
/// time is read.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339"
)]
impl ScalarType for EsiTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => DateTime::parse_from_rfc3339(text)
                .map(|time| Self(time.with_timezone(&Utc)))
                .map_err(|e| InputValueError::custom(format!("not an RFC 3339 time: {e}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}
