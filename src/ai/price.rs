//! Money: [`PriceTable`] prices a call's [`Usage`] as a [`Cost`].
//!
//! Nothing is hard-coded: prices change often and differ between accounts,
//! so the user supplies them, in dollars per million tokens as providers
//! publish them.
//!
//! See [`PriceTable`] for model matching, the arithmetic and rounding.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

use crate::ai::usage::Usage;

/// Micro-dollars per dollar.
const MICROS_PER_DOLLAR: f64 = 1_000_000.0;

/// The prices of one model, in dollars.
///
/// Token prices are dollars per million tokens (`2.5` for "$2.50 / 1M
/// tokens"), `per_call` is dollars per call.
///
/// ```
/// use tower_idempotency::ai::{Cost, ModelPrice, PriceTable, Usage};
///
/// let price = ModelPrice::new(3.0, 15.0)
///     .with_cached_input(0.30)
///     .with_per_call(0.01);
/// let prices = PriceTable::new().with_model_price("claude-sonnet-4", price);
///
/// let usage = Usage { input_tokens: 1_000, output_tokens: 100, cached_input_tokens: 400, ..Usage::default() };
/// // 600 × $3 + 400 × $0.30 + 100 × $15 per million tokens, and $0.01 per call
/// assert_eq!(prices.cost(Some("claude-sonnet-4"), Some(&usage)), Cost::from_micro_dollars(13_420));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelPrice {
    /// Dollars per million uncached input tokens.
    pub input_per_mtok: f64,
    /// Dollars per million output tokens.
    pub output_per_mtok: f64,
    /// Dollars per million input tokens read from the prompt cache; `None`
    /// prices them as ordinary input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// Dollars per million input tokens written to the prompt cache
    /// (Anthropic); `None` prices them as ordinary input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
    /// Dollars added to every call of this model.
    #[serde(default)]
    pub per_call: f64,
}

impl ModelPrice {
    /// Input and output prices in dollars per million tokens; no cache
    /// prices, nothing per call.
    pub fn new(input_per_mtok: f64, output_per_mtok: f64) -> Self {
        ModelPrice {
            input_per_mtok,
            output_per_mtok,
            ..ModelPrice::default()
        }
    }

    /// Sets the price of cache reads, in dollars per million tokens.
    pub fn with_cached_input(mut self, per_mtok: f64) -> Self {
        self.cached_input_per_mtok = Some(per_mtok);
        self
    }

    /// Sets the price of cache writes, in dollars per million tokens.
    pub fn with_cache_write(mut self, per_mtok: f64) -> Self {
        self.cache_write_per_mtok = Some(per_mtok);
        self
    }

    /// Sets a price in dollars added to every call.
    pub fn with_per_call(mut self, dollars: f64) -> Self {
        self.per_call = dollars;
        self
    }

    /// The unrounded cost of `usage` plus the per-call price, in micro-dollars.
    fn micro_dollars(&self, usage: &Usage) -> f64 {
        // Zero tokens cost nothing whatever the price (no `0 × ∞ = NaN`).
        // u64 → f64 is exact up to 2^53 tokens, far beyond any real call.
        fn term(tokens: u64, per_mtok: f64) -> f64 {
            if tokens == 0 {
                0.0
            } else {
                tokens as f64 * per_mtok
            }
        }
        term(usage.uncached_input_tokens(), self.input_per_mtok)
            + term(
                usage.cached_input_tokens,
                self.cached_input_per_mtok.unwrap_or(self.input_per_mtok),
            )
            + term(
                usage.cache_creation_input_tokens,
                self.cache_write_per_mtok.unwrap_or(self.input_per_mtok),
            )
            + term(usage.output_tokens, self.output_per_mtok)
            + self.per_call * MICROS_PER_DOLLAR
    }
}

/// Prices the user supplies, per model and per call.
///
/// # Model matching
///
/// A model name is looked up exactly first; failing that, the longest
/// configured name that is a prefix of it is used, so `"gpt-4o"` prices
/// `"gpt-4o-2024-08-06"`, while `"gpt-4o-mini"`, if configured, wins for
/// `"gpt-4o-mini-2024-07-18"`. Matching is case-sensitive and byte-wise; a
/// configured empty name is a prefix of every name and so a catch-all.
///
/// # Which price applies
///
/// [`cost`](Self::cost) uses, in this order:
/// 1. a matching model and known usage: the token prices plus the model's
///    `per_call`;
/// 2. a matching model with a non-zero `per_call` but no usage: that
///    `per_call`;
/// 3. otherwise (no model, no match, or a token-priced model without usage):
///    the table-wide per-call price of [`with_per_call`](Self::with_per_call),
///    zero if none is set.
///
/// # Rounding
///
/// A dollar price per million tokens is exactly a micro-dollar price per
/// token, so the cost of one call is computed in `f64` as
///
/// ```text
/// uncached input × input price
///   + cache reads × cached-input price (the input price if none is set)
///   + cache writes × cache-write price (the input price if none is set)
///   + output × output price
///   + per-call price × 1 000 000
/// ```
///
/// in micro-dollars (a term with zero tokens is zero whatever its price) and
/// then rounded once to the nearest whole micro-dollar (halves away from zero;
/// a negative or NaN result is zero, a result beyond `u64::MAX` saturates). [`Cost`] holds whole micro-dollars in a `u64`, so
/// summing many calls is exact and does not depend on their order. The same
/// inputs always give the same cost.
///
/// # Configuration
///
/// It (de)serializes as
/// `{"models": {"gpt-4o": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}}, "per_call": 0.002}`
/// (`cached_input_per_mtok`, `cache_write_per_mtok`, `per_call` and the
/// table's `per_call` are optional), so prices can live in a configuration
/// file.
///
/// # Example
///
/// ```
/// use tower_idempotency::ai::{Cost, ModelPrice, PriceTable, Usage};
///
/// let prices = PriceTable::new()
///     .with_model("gpt-4o-mini", 0.15, 0.60)
///     .with_model_price(
///         "claude-sonnet-4",
///         ModelPrice::new(3.0, 15.0).with_cached_input(0.30).with_cache_write(3.75),
///     )
///     .with_per_call(0.002); // e.g. a vision API billed per call
///
/// let usage = Usage { input_tokens: 10_000, output_tokens: 500, cached_input_tokens: 8_000, ..Usage::default() };
/// // 2 000 × $3 + 8 000 × $0.30 + 500 × $15 per million tokens
/// assert_eq!(prices.cost(Some("claude-sonnet-4-20250514"), Some(&usage)), Cost::from_micro_dollars(15_900));
/// // No model matches: the flat per-call price.
/// assert_eq!(prices.cost(Some("describe-image"), None).to_string(), "$0.002000");
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_call: Option<f64>,
}

impl PriceTable {
    /// An empty table: every call costs zero.
    pub fn new() -> Self {
        PriceTable::default()
    }

    /// Adds (or replaces) a model's input and output prices in dollars per
    /// million tokens, with no cache prices (cached tokens are priced as
    /// input).
    pub fn with_model(
        self,
        model: impl Into<String>,
        input_per_mtok: f64,
        output_per_mtok: f64,
    ) -> Self {
        self.with_model_price(model, ModelPrice::new(input_per_mtok, output_per_mtok))
    }

    /// Adds (or replaces) a model's full prices.
    pub fn with_model_price(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.models.insert(model.into(), price);
        self
    }

    /// Sets a flat price in dollars per call for non-token APIs (the vision
    /// call of an image-describing API), used when no model matches or a
    /// matching model has no usage to price.
    pub fn with_per_call(mut self, dollars: f64) -> Self {
        self.per_call = Some(dollars);
        self
    }

    /// Whether no model and no per-call price is configured.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.per_call.is_none()
    }

    /// The configured name and prices that apply to `model`: exact match
    /// first, then the longest configured prefix.
    pub fn model_price(&self, model: &str) -> Option<(&str, &ModelPrice)> {
        if let Some((name, price)) = self.models.get_key_value(model) {
            return Some((name, price));
        }
        self.models
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(name, price)| (name.as_str(), price))
    }

    /// The cost of one call; see the type docs for which price applies.
    pub fn cost(&self, model: Option<&str>, usage: Option<&Usage>) -> Cost {
        let price = model
            .and_then(|model| self.model_price(model))
            .map(|(_, price)| price);
        let micros = match (price, usage) {
            (Some(price), Some(usage)) => price.micro_dollars(usage),
            (Some(price), None) if price.per_call != 0.0 => price.per_call * MICROS_PER_DOLLAR,
            _ => self.per_call.unwrap_or(0.0) * MICROS_PER_DOLLAR,
        };
        Cost::from_f64_micros(micros)
    }
}

/// An amount of money in whole micro-dollars (millionths of a dollar).
///
/// Adding costs (`+`, `+=`, [`Sum`]) is exact and saturates at `u64::MAX`
/// micro-dollars (about 18 trillion dollars). It displays as dollars with six
/// decimals: `$1.234567`.
///
/// ```
/// use tower_idempotency::ai::Cost;
///
/// let total: Cost = [Cost::from_dollars(0.0025), Cost::from_micro_dollars(2_000)].into_iter().sum();
/// assert_eq!(total.micro_dollars(), 4_500);
/// assert_eq!(total.to_string(), "$0.004500");
/// assert_eq!(Cost::from_dollars(-1.0), Cost::ZERO);
/// ```
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Cost {
    micro_dollars: u64,
}

impl Cost {
    /// Zero dollars.
    pub const ZERO: Cost = Cost { micro_dollars: 0 };

    /// A cost of `micro_dollars` millionths of a dollar.
    pub const fn from_micro_dollars(micro_dollars: u64) -> Self {
        Cost { micro_dollars }
    }

    /// A cost of `dollars`, rounded to the nearest micro-dollar like
    /// [`PriceTable::cost`] (negative or NaN is zero; too large saturates).
    pub fn from_dollars(dollars: f64) -> Self {
        Cost::from_f64_micros(dollars * MICROS_PER_DOLLAR)
    }

    /// The cost in micro-dollars.
    pub const fn micro_dollars(self) -> u64 {
        self.micro_dollars
    }

    /// The cost in dollars (the nearest `f64`).
    pub fn as_dollars(self) -> f64 {
        self.micro_dollars as f64 / MICROS_PER_DOLLAR
    }

    /// Rounds to the nearest micro-dollar, halves away from zero.
    fn from_f64_micros(micros: f64) -> Self {
        // `as` saturates: NaN and negatives become 0, too large becomes u64::MAX.
        Cost {
            micro_dollars: micros.round() as u64,
        }
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "${}.{:06}",
            self.micro_dollars / 1_000_000,
            self.micro_dollars % 1_000_000
        )
    }
}

impl Add for Cost {
    type Output = Cost;

    fn add(self, rhs: Cost) -> Cost {
        Cost {
            micro_dollars: self.micro_dollars.saturating_add(rhs.micro_dollars),
        }
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, rhs: Cost) {
        *self = *self + rhs;
    }
}

impl Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a Cost> for Cost {
    fn sum<I: Iterator<Item = &'a Cost>>(iter: I) -> Cost {
        iter.copied().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    #[test]
    fn token_prices() {
        let table = PriceTable::new().with_model("gpt-4o", 2.5, 10.0);
        // 1234 × 2.5 + 567 × 10 = 3085 + 5670 micro-dollars
        assert_eq!(
            table
                .cost(Some("gpt-4o"), Some(&usage(1234, 567)))
                .micro_dollars(),
            8_755
        );
    }

    #[test]
    fn exact_sums_over_many_calls() {
        let table = PriceTable::new().with_model("gpt-4o-mini", 0.15, 0.60);
        let call = usage(1_000, 100); // 150 + 60 = 210 micro-dollars
        let total: Cost = (0..100_000)
            .map(|_| table.cost(Some("gpt-4o-mini"), Some(&call)))
            .sum();
        assert_eq!(total.micro_dollars(), 21_000_000);
        assert_eq!(total.as_dollars(), 21.0);
        assert_eq!(total.to_string(), "$21.000000");

        // The f64 sum of the same dollars drifts; the micro-dollar sum does not.
        let mut running = Cost::ZERO;
        let mut float = 0.0_f64;
        for _ in 0..1_000_000 {
            let cost = Cost::from_dollars(0.000_1);
            running += cost;
            float += cost.as_dollars();
        }
        assert_eq!(running.micro_dollars(), 100_000_000);
        assert_ne!(float, 100.0);
    }

    #[test]
    fn rounding_is_to_nearest_micro_dollar_per_call() {
        let table = PriceTable::new().with_model("m", 0.15, 0.0);
        let cost = |input| {
            table
                .cost(Some("m"), Some(&usage(input, 0)))
                .micro_dollars()
        };
        assert_eq!(cost(1), 0); // 0.15
        assert_eq!(cost(3), 0); // 0.45
        assert_eq!(cost(4), 1); // 0.6
        assert_eq!(cost(10), 2); // 1.5 → 2 (half away from zero)
        let half = PriceTable::new().with_model("m", 0.5, 0.0);
        assert_eq!(half.cost(Some("m"), Some(&usage(1, 0))).micro_dollars(), 1);
    }

    #[test]
    fn prefix_matching() {
        let table = PriceTable::new()
            .with_model("gpt-4", 30.0, 60.0)
            .with_model("gpt-4o", 2.5, 10.0)
            .with_model("gpt-4o-mini", 0.15, 0.6)
            .with_model("gpt-4o-2024-05-13", 5.0, 15.0);
        let name = |model| table.model_price(model).map(|(name, _)| name);
        assert_eq!(name("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(name("gpt-4o-2024-05-13"), Some("gpt-4o-2024-05-13"));
        assert_eq!(name("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(name("gpt-4-turbo"), Some("gpt-4"));
        assert_eq!(name("gpt-3.5-turbo"), None);
        assert_eq!(name("GPT-4o"), None);
        assert_eq!(name(""), None);
        let one_m = usage(1_000_000, 0);
        assert_eq!(
            table.cost(Some("gpt-4o-2024-08-06"), Some(&one_m)),
            Cost::from_dollars(2.5)
        );
    }

    #[test]
    fn empty_name_is_a_catch_all() {
        let table = PriceTable::new()
            .with_model("", 1.0, 1.0)
            .with_model("x", 2.0, 2.0);
        assert_eq!(table.model_price("anything").map(|(n, _)| n), Some(""));
        assert_eq!(table.model_price("xy").map(|(n, _)| n), Some("x"));
    }

    #[test]
    fn per_call_fallback() {
        let table = PriceTable::new()
            .with_model("gpt-4o", 2.5, 10.0)
            .with_model_price("dall-e-3", ModelPrice::new(0.0, 0.0).with_per_call(0.04))
            .with_per_call(0.002);
        let flat = Cost::from_micro_dollars(2_000);
        assert_eq!(table.cost(None, None), flat);
        assert_eq!(table.cost(None, Some(&usage(10, 10))), flat);
        assert_eq!(table.cost(Some("describe-v1"), Some(&usage(10, 10))), flat);
        assert_eq!(table.cost(Some("gpt-4o"), None), flat);
        assert_eq!(table.cost(Some("dall-e-3"), None), Cost::from_dollars(0.04));
        assert_eq!(
            table.cost(Some("dall-e-3"), Some(&usage(0, 0))),
            Cost::from_dollars(0.04)
        );
        assert_eq!(
            table.cost(Some("gpt-4o"), Some(&usage(1_000, 0))),
            Cost::from_micro_dollars(2_500)
        );
        assert_eq!(PriceTable::new().cost(Some("gpt-4o"), None), Cost::ZERO);
    }

    #[test]
    fn model_per_call_is_added_to_token_cost() {
        let table =
            PriceTable::new().with_model_price("m", ModelPrice::new(1.0, 2.0).with_per_call(0.01));
        assert_eq!(
            table.cost(Some("m"), Some(&usage(100, 10))).micro_dollars(),
            100 + 20 + 10_000
        );
    }

    #[test]
    fn cached_input_price_applied_when_given() {
        let cached = Usage {
            input_tokens: 10_000,
            output_tokens: 1_000,
            cached_input_tokens: 8_000,
            cache_creation_input_tokens: 0,
        };
        let with = PriceTable::new()
            .with_model_price("m", ModelPrice::new(2.5, 10.0).with_cached_input(1.25));
        // 2 000 × 2.5 + 8 000 × 1.25 + 1 000 × 10
        assert_eq!(
            with.cost(Some("m"), Some(&cached)).micro_dollars(),
            5_000 + 10_000 + 10_000
        );
        let without = PriceTable::new().with_model("m", 2.5, 10.0);
        // 10 000 × 2.5 + 1 000 × 10
        assert_eq!(
            without.cost(Some("m"), Some(&cached)).micro_dollars(),
            25_000 + 10_000
        );
    }

    #[test]
    fn cache_write_price_applied_when_given() {
        let usage = Usage {
            input_tokens: 4_321,
            output_tokens: 393,
            cached_input_tokens: 3_100,
            cache_creation_input_tokens: 1_200,
        };
        let full = ModelPrice::new(3.0, 15.0)
            .with_cached_input(0.3)
            .with_cache_write(3.75);
        let table = PriceTable::new().with_model_price("claude", full);
        // 21 × 3 + 3 100 × 0.3 + 1 200 × 3.75 + 393 × 15 = 63 + 930 + 4 500 + 5 895
        assert_eq!(
            table.cost(Some("claude"), Some(&usage)).micro_dollars(),
            11_388
        );
        let plain = PriceTable::new().with_model("claude", 3.0, 15.0);
        // 4 321 × 3 + 393 × 15 = 12 963 + 5 895
        assert_eq!(
            plain.cost(Some("claude"), Some(&usage)).micro_dollars(),
            18_858
        );
    }

    #[test]
    fn odd_prices_do_not_panic() {
        let huge = usage(u64::MAX, u64::MAX);
        let table = PriceTable::new()
            .with_model("neg", -5.0, 1.0)
            .with_model("nan", f64::NAN, 1.0)
            .with_model("inf", f64::INFINITY, 1.0)
            .with_model("big", 1e300, 1e300);
        assert_eq!(table.cost(Some("neg"), Some(&usage(1_000, 0))), Cost::ZERO);
        assert_eq!(table.cost(Some("nan"), Some(&usage(1, 0))), Cost::ZERO);
        assert_eq!(
            table.cost(Some("inf"), Some(&usage(1, 0))).micro_dollars(),
            u64::MAX
        );
        assert_eq!(
            table.cost(Some("big"), Some(&huge)).micro_dollars(),
            u64::MAX
        );
        assert_eq!(Cost::from_dollars(-1.0), Cost::ZERO);
        assert_eq!(Cost::from_dollars(f64::NAN), Cost::ZERO);
    }

    #[test]
    fn cost_arithmetic_and_display() {
        let a = Cost::from_micro_dollars(1_500_000);
        let b = Cost::from_micro_dollars(7);
        assert_eq!((a + b).micro_dollars(), 1_500_007);
        assert_eq!((a + b).to_string(), "$1.500007");
        assert_eq!(Cost::ZERO.to_string(), "$0.000000");
        assert_eq!([a, b].iter().sum::<Cost>(), a + b);
        assert!(b < a);
        assert_eq!(
            Cost::from_micro_dollars(u64::MAX) + a,
            Cost::from_micro_dollars(u64::MAX)
        );
        assert_eq!(a.as_dollars(), 1.5);
        assert_eq!(Cost::from_dollars(0.000_000_5), Cost::from_micro_dollars(1));
    }

    #[test]
    fn serde_round_trip() {
        let table = PriceTable::new()
            .with_model("a", 1.0, 2.0)
            .with_model_price("b", ModelPrice::new(3.0, 4.0).with_cached_input(0.5))
            .with_per_call(0.01);
        let json = serde_json::to_string(&table).expect("serialize");
        assert_eq!(
            json,
            r#"{"models":{"a":{"input_per_mtok":1.0,"output_per_mtok":2.0,"per_call":0.0},"b":{"input_per_mtok":3.0,"output_per_mtok":4.0,"cached_input_per_mtok":0.5,"per_call":0.0}},"per_call":0.01}"#
        );
        let back: PriceTable = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, table);
        let minimal: PriceTable =
            serde_json::from_str(r#"{"models":{"m":{"input_per_mtok":1,"output_per_mtok":2}}}"#)
                .expect("deserialize");
        assert_eq!(minimal, PriceTable::new().with_model("m", 1.0, 2.0));
        assert_eq!(
            serde_json::to_string(&Cost::from_micro_dollars(5)).expect("serialize"),
            r#"{"micro_dollars":5}"#
        );
    }
}
