//! Parsers of untrusted bytes (MNIST IDX, gzip, safetensors weights) never panic: arbitrary and
//! mutated inputs give a result or a typed error.

use hetensor::nn::{mnist, weights, Sequential};
use hetensor::Error;
use proptest::prelude::*;

fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x0000_0803u32, count, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..count * rows * cols).map(|i| (i % 251) as u8));
    v
}

fn lenet_bytes() -> Vec<u8> {
    let model = weights::pretrained_lenet1().expect("bundled weights");
    weights::to_bytes(&model, weights::DType::F32).expect("serialize")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = mnist::parse_images(&bytes);
        let _ = mnist::parse_labels(&bytes);
        let _ = mnist::gunzip_if_needed(bytes.clone());
        let mut m = Sequential::lenet1();
        let _ = weights::load_from_bytes(&mut m, &bytes);
    }

    #[test]
    fn mutated_idx_parses_or_errors(pos in 0usize..64, byte in any::<u8>(), cut in 0usize..80) {
        let mut v = idx_images(3, 4, 5);
        let p = pos % v.len();
        v[p] = byte;
        v.truncate(v.len().saturating_sub(cut % 8));
        match mnist::parse_images(&v) {
            Ok(a) => prop_assert_eq!(a.len() + 16, v.len()),
            Err(e) => prop_assert!(matches!(e, Error::Data(_))),
        }
    }

    #[test]
    fn mutated_weights_load_or_error(pos in any::<usize>(), byte in any::<u8>()) {
        let mut v = lenet_bytes();
        let p = pos % v.len();
        v[p] = byte;
        let mut m = Sequential::lenet1();
        if let Err(e) = weights::load_from_bytes(&mut m, &v) {
            prop_assert!(matches!(e, Error::Model(_)), "{e}");
        }
    }
}

#[test]
fn gzip_bombs_and_truncations_are_errors() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&idx_images(2, 3, 3)).expect("gzip");
    let gz = enc.finish().expect("gzip");
    assert!(mnist::gunzip_if_needed(gz.clone()).is_ok());
    assert!(matches!(
        mnist::gunzip_if_needed(gz[..gz.len() / 2].to_vec()),
        Err(Error::Data(_))
    ));
}
