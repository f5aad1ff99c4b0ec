//! The `schedules:` list of a backend (a key of this runner's own).

use serde_json::Value;

use super::ConfigError;
use super::walk::Walker;
use crate::job::retry::Strategy;
use crate::schedule::{Every, Missed, Schedule, is_schedule_name};

impl Walker<'_> {
    /// The `schedules:` list of a backend.
    pub(super) fn schedules(&self, value: &Value, key: &str) -> Result<Vec<Schedule>, ConfigError> {
        let Value::Array(items) = value else {
            return Err(self.err(key, "expected a list of schedules"));
        };
        let mut schedules: Vec<Schedule> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let key = format!("{key}[{index}]");
            let obj = self.object(item, &key)?;
            let name_key = format!("{key}.name");
            let name = self.required_string(obj.get("name"), &name_key)?;
            if !is_schedule_name(&name) {
                return Err(self.err(
                    &name_key,
                    format!("{name:?} may hold only letters, digits, `_` and `-`"),
                ));
            }
            if schedules.iter().any(|s| s.name == name) {
                return Err(self.err(
                    &name_key,
                    format!("a schedule named {name:?} already exists for this backend"),
                ));
            }
            schedules.push(self.schedule(obj, name, key)?);
        }
        Ok(schedules)
    }

    /// One schedule, after its name was checked.
    fn schedule(
        &self,
        obj: &serde_json::Map<String, Value>,
        name: String,
        key: String,
    ) -> Result<Schedule, ConfigError> {
        let expression_key = format!("{key}.schedule");
        let expression = self.required_string(obj.get("schedule"), &expression_key)?;
        let timezone = self.opt_string(obj.get("timezone"), &format!("{key}.timezone"))?;
        let every = Every::parse(&expression, timezone.as_deref())
            .map_err(|m| self.err(&expression_key, m))?;
        let path = self.required_string(obj.get("path"), &format!("{key}.path"))?;
        let payload = match obj.get("payload") {
            None => Value::Object(Default::default()),
            Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
                self.err(
                    &format!("{key}.payload"),
                    format!("a string payload must be JSON: {e}"),
                )
            })?,
            Some(other) => other.clone(),
        };
        let max_retries = self.opt_u64(obj.get("max_retries"), &format!("{key}.max_retries"))?;
        let max_retries =
            u32::try_from(max_retries.unwrap_or(u64::from(crate::config::limits::MAX_RETRIES)))
                .map_err(|_| self.err(&format!("{key}.max_retries"), "is too large"))?;
        let strategy_key = format!("{key}.retry_strategy");
        let retry_strategy = match self.opt_string(obj.get("retry_strategy"), &strategy_key)? {
            None => Strategy::Linear,
            Some(text) => Strategy::parse(&text).ok_or_else(|| {
                self.err(
                    &strategy_key,
                    format!("{text:?} is not linear or exponential"),
                )
            })?,
        };
        let priority = match obj.get("priority") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_i64()
                .ok_or_else(|| self.err(&format!("{key}.priority"), "expected a whole number"))?,
        };
        let missed_key = format!("{key}.missed");
        let missed = match self.opt_string(obj.get("missed"), &missed_key)?.as_deref() {
            None | Some("run-once") => Missed::RunOnce,
            Some("skip") => Missed::Skip,
            Some(other) => {
                return Err(self.err(&missed_key, format!("{other:?} is not run-once or skip")));
            }
        };
        Ok(Schedule {
            name,
            expression,
            every,
            path,
            payload,
            max_retries,
            retry_strategy,
            priority,
            missed,
            key,
        })
    }
}
