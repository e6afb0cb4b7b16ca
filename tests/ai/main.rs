//! Token usage read from recorded shapes of public OpenAI and Anthropic
//! responses, and the parsers' robustness against arbitrary input.

mod fixtures;
mod no_panic;
