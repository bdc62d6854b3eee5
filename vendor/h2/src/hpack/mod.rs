mod decoder;
mod encoder;
pub(crate) mod header;
// portcullis: public (was pub(crate)), see lib.rs
pub mod huffman;
mod table;

#[cfg(test)]
mod test;

pub use self::decoder::{Decoder, DecoderError, NeedMore};
pub use self::encoder::Encoder;
pub use self::header::{BytesStr, Header};
