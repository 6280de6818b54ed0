//! trainer-candle
