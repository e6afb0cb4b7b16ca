//! The [`Usage`] type and how provider `usage` objects map onto it.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde_json::Value;

/// Token usage reported by an AI API response, normalised across providers.
///
/// # Convention
///
/// `input_tokens` counts **every** input token of the call, including the ones
/// read from the provider's prompt cache and the ones written to it;
/// [`cached_input_tokens`](Self::cached_input_tokens) and
/// [`cache_creation_input_tokens`](Self::cache_creation_input_tokens) say how
/// many of those were cache reads and cache writes. So
/// `cached_input_tokens + cache_creation_input_tokens <= input_tokens` for any
/// usage a real API reports, and [`total`](Self::total) is simply
/// `input_tokens + output_tokens`.
///
/// Providers count differently, and [`parse_usage`](crate::ai::parse_usage)
/// converts:
///
/// | field | OpenAI (chat, embeddings, Responses API) | Anthropic (messages) |
/// |---|---|---|
/// | `input_tokens` | `prompt_tokens` / `input_tokens` (already includes cached) | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` |
/// | `output_tokens` | `completion_tokens` / `output_tokens` (0 for embeddings) | `output_tokens` |
/// | `cached_input_tokens` | `prompt_tokens_details.cached_tokens` / `input_tokens_details.cached_tokens` | `cache_read_input_tokens` |
/// | `cache_creation_input_tokens` | 0 | `cache_creation_input_tokens` |
///
/// Anthropic's own `input_tokens` (the uncached part) is
/// [`uncached_input_tokens`](Self::uncached_input_tokens).
///
/// Adding usages (`+`, `+=`, [`Sum`]) adds field by field, saturating at
/// `u64::MAX`.
///
/// ```
/// use tower_idempotency::ai::Usage;
///
/// // An Anthropic call that read 90 of its 100 input tokens from the cache.
/// let call = Usage { input_tokens: 100, output_tokens: 5, cached_input_tokens: 90, cache_creation_input_tokens: 0 };
/// assert_eq!(call.total(), 105);
/// assert_eq!(call.uncached_input_tokens(), 10);
///
/// let day: Usage = [call, call, call].into_iter().sum();
/// assert_eq!((day.input_tokens, day.output_tokens), (300, 15));
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(default)]
pub struct Usage {
    /// All input (prompt) tokens, cached ones included.
    pub input_tokens: u64,
    /// Output (completion) tokens, reasoning tokens included.
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (a part of `input_tokens`).
    pub cached_input_tokens: u64,
    /// Input tokens written to the provider's prompt cache (a part of
    /// `input_tokens`; Anthropic only, 0 for OpenAI).
    pub cache_creation_input_tokens: u64,
}

impl Usage {
    /// All tokens of the call: `input_tokens + output_tokens` (saturating).
    ///
    /// Cache reads and writes are not added again: they are already part of
    /// `input_tokens`. For OpenAI this equals the response's `total_tokens`.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Input tokens neither read from nor written to the prompt cache:
    /// `input_tokens - cached_input_tokens - cache_creation_input_tokens`,
    /// never below zero.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens)
            .saturating_sub(self.cache_creation_input_tokens)
    }
}

impl Add for Usage {
    type Output = Usage;

    fn add(mut self, rhs: Usage) -> Usage {
        self += rhs;
        self
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(rhs.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rhs.output_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(rhs.cached_input_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(rhs.cache_creation_input_tokens);
    }
}

impl Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), Add::add)
    }
}

impl<'a> Sum<&'a Usage> for Usage {
    fn sum<I: Iterator<Item = &'a Usage>>(iter: I) -> Usage {
        iter.copied().sum()
    }
}

/// The counters of one provider `usage` object, as the provider named them.
///
/// `None` means the field was absent (or not a usable number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawUsage {
    /// `prompt_tokens`, else `input_tokens`.
    input: Option<u64>,
    /// `completion_tokens`, else `output_tokens`.
    output: Option<u64>,
    /// OpenAI's `prompt_tokens_details.cached_tokens`, else
    /// `input_tokens_details.cached_tokens` (a part of `input`).
    openai_cached: Option<u64>,
    /// Anthropic's `cache_read_input_tokens` (not a part of `input`).
    cache_read: Option<u64>,
    /// Anthropic's `cache_creation_input_tokens` (not a part of `input`).
    cache_creation: Option<u64>,
}

impl RawUsage {
    /// Reads a provider `usage` object; `None` unless it is an object with at
    /// least one known counter.
    pub(crate) fn from_value(value: &Value) -> Option<RawUsage> {
        let object = value.as_object()?;
        let count = |key: &str| object.get(key).and_then(token_count);
        let nested = |outer: &str, inner: &str| {
            object
                .get(outer)
                .and_then(|details| details.get(inner))
                .and_then(token_count)
        };
        let raw = RawUsage {
            input: count("prompt_tokens").or_else(|| count("input_tokens")),
            output: count("completion_tokens").or_else(|| count("output_tokens")),
            openai_cached: nested("prompt_tokens_details", "cached_tokens")
                .or_else(|| nested("input_tokens_details", "cached_tokens")),
            cache_read: count("cache_read_input_tokens"),
            cache_creation: count("cache_creation_input_tokens"),
        };
        (raw != RawUsage::default()).then_some(raw)
    }

    /// Folds a later usage object of the same stream into this one: field by
    /// field, a later non-zero value replaces the earlier one, and a later zero
    /// only fills a field not seen before.
    pub(crate) fn merge(&mut self, later: &RawUsage) {
        fn field(current: &mut Option<u64>, later: Option<u64>) {
            match later {
                Some(n) if n != 0 => *current = Some(n),
                Some(_) if current.is_none() => *current = later,
                _ => {}
            }
        }
        field(&mut self.input, later.input);
        field(&mut self.output, later.output);
        field(&mut self.openai_cached, later.openai_cached);
        field(&mut self.cache_read, later.cache_read);
        field(&mut self.cache_creation, later.cache_creation);
    }

    /// Converts to the [`Usage`] convention (see its docs).
    pub(crate) fn normalise(&self) -> Usage {
        let read = self.cache_read.unwrap_or(0);
        let creation = self.cache_creation.unwrap_or(0);
        Usage {
            input_tokens: self
                .input
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(creation),
            output_tokens: self.output.unwrap_or(0),
            cached_input_tokens: self.openai_cached.unwrap_or(0).saturating_add(read),
            cache_creation_input_tokens: creation,
        }
    }
}

/// A token count: a non-negative JSON integer. Integral floats up to 2^53
/// (`12.0`) are accepted too; negative, fractional, huge and non-numeric
/// values are not.
fn token_count(value: &Value) -> Option<u64> {
    const MAX_EXACT_F64: f64 = 9_007_199_254_740_992.0; // 2^53
    let number = value.as_number()?;
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=MAX_EXACT_F64).contains(f))
            // In range and integral, so the cast is exact.
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn normalised(value: Value) -> Option<Usage> {
        RawUsage::from_value(&value).map(|raw| raw.normalise())
    }

    #[test]
    fn total_and_uncached() {
        let usage = Usage {
            input_tokens: 100,
            output_tokens: 7,
            cached_input_tokens: 60,
            cache_creation_input_tokens: 30,
        };
        assert_eq!(usage.total(), 107);
        assert_eq!(usage.uncached_input_tokens(), 10);
        let odd = Usage {
            input_tokens: 5,
            cached_input_tokens: 60,
            ..Usage::default()
        };
        assert_eq!(odd.uncached_input_tokens(), 0);
        let huge = Usage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(huge.total(), u64::MAX);
    }

    #[test]
    fn adding_usages() {
        let one = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cached_input_tokens: 3,
            cache_creation_input_tokens: 4,
        };
        let sum: Usage = [one, one, one].iter().sum();
        assert_eq!(
            sum,
            Usage {
                input_tokens: 3,
                output_tokens: 6,
                cached_input_tokens: 9,
                cache_creation_input_tokens: 12,
            }
        );
        let max = Usage {
            input_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!((max + one).input_tokens, u64::MAX);
    }

    #[test]
    fn openai_counts_cached_inside_prompt() {
        let usage = normalised(json!({
            "prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024}
        }));
        assert_eq!(
            usage,
            Some(Usage {
                input_tokens: 1117,
                output_tokens: 46,
                cached_input_tokens: 1024,
                cache_creation_input_tokens: 0,
            })
        );
    }

    #[test]
    fn anthropic_cache_fields_are_added_to_input() {
        let usage = normalised(json!({
            "input_tokens": 21, "cache_creation_input_tokens": 1200,
            "cache_read_input_tokens": 3100, "output_tokens": 393,
            "service_tier": "standard"
        }));
        assert_eq!(
            usage,
            Some(Usage {
                input_tokens: 4321,
                output_tokens: 393,
                cached_input_tokens: 3100,
                cache_creation_input_tokens: 1200,
            })
        );
    }

    #[test]
    fn unrecognisable_usage_objects() {
        assert_eq!(normalised(json!(null)), None);
        assert_eq!(normalised(json!({})), None);
        assert_eq!(normalised(json!(42)), None);
        assert_eq!(normalised(json!({"total_tokens": 5})), None);
        assert_eq!(normalised(json!({"prompt_tokens": "5"})), None);
        assert_eq!(normalised(json!({"prompt_tokens": -5})), None);
        assert_eq!(normalised(json!({"prompt_tokens": 1.5})), None);
        assert_eq!(normalised(json!({"prompt_tokens": 1e300})), None);
    }

    #[test]
    fn token_count_bounds() {
        assert_eq!(token_count(&json!(0)), Some(0));
        assert_eq!(token_count(&json!(u64::MAX)), Some(u64::MAX));
        assert_eq!(token_count(&json!(12.0)), Some(12));
        assert_eq!(token_count(&json!(-0.0)), Some(0));
        assert_eq!(
            token_count(&json!(9_007_199_254_740_992.0_f64)),
            Some(1 << 53)
        );
        assert_eq!(token_count(&json!(18_014_398_509_481_984.0_f64)), None);
        assert_eq!(token_count(&json!(-1)), None);
        assert_eq!(token_count(&json!(i64::MIN)), None);
        assert_eq!(token_count(&json!(true)), None);
    }

    #[test]
    fn huge_counts_saturate() {
        let usage = normalised(json!({
            "input_tokens": u64::MAX, "cache_read_input_tokens": u64::MAX,
            "cache_creation_input_tokens": 1
        }))
        .expect("usage");
        assert_eq!(usage.input_tokens, u64::MAX);
        assert_eq!(usage.cached_input_tokens, u64::MAX);
    }

    #[test]
    fn merge_prefers_latest_non_zero() {
        let mut raw = RawUsage::from_value(&json!({
            "input_tokens": 25, "cache_read_input_tokens": 10, "output_tokens": 1
        }))
        .expect("usage");
        let later = RawUsage::from_value(&json!({
            "input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 15
        }))
        .expect("usage");
        raw.merge(&later);
        assert_eq!(
            raw.normalise(),
            Usage {
                input_tokens: 35,
                output_tokens: 15,
                cached_input_tokens: 10,
                cache_creation_input_tokens: 0,
            }
        );
    }
}
