//! A request's query string, read once: each handler takes the parameters it knows, and a
//! value it cannot use is a 400 naming the parameter.

use super::ApiError;

pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Self(url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// An integer within `min..=max`.
    pub fn int(&self, name: &'static str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => match raw.parse::<i64>() {
                Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(ApiError::bad(
                    "invalid_parameter",
                    format!("{name} must be an integer from {min} to {max}, got '{raw}'"),
                )),
            },
        }
    }

    /// An RFC 3339 time; empty is none.
    pub fn time(&self, name: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|_| ApiError::bad("invalid_parameter", format!("{name} must be an RFC 3339 time, got '{t}'"))),
        }
    }

    /// `1`/`true` or `0`/`false`/empty; absent is false. Given more than once, each must be
    /// one of these and the last wins.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        self.0.iter().filter(|(k, _)| k == name).try_fold(false, |_, (_, v)| match v.as_str() {
            "0" | "false" | "" => Ok(false),
            "1" | "true" => Ok(true),
            other => Err(ApiError::bad("invalid_parameter", format!("{name} must be 1 or 0, got '{other}'"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn parameters_read_and_refused_by_name() {
        let q = Query::parse(Some("limit=5&since=2026-01-01T00:00:00Z&boxes=0&boxes=1&bad=x"));
        assert_eq!(q.int("limit", 1, 10).unwrap(), Some(5));
        assert!(q.int("limit", 6, 10).unwrap_err().to_string().contains("limit must be an integer from 6 to 10"));
        assert_eq!(q.int("absent", 1, 10).unwrap(), None);
        assert!(q.time("since").unwrap().is_some());
        assert!(q.time("bad").unwrap_err().to_string().contains("bad must be an RFC 3339 time"));
        assert!(q.flag("boxes").unwrap(), "the last value wins");
        assert!(!q.flag("absent").unwrap());
        assert!(Query::parse(Some("boxes=1&boxes=maybe")).flag("boxes").is_err(), "every value is checked");
    }
}
