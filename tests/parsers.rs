//! Parsers of untrusted bytes (MNIST IDX, gzip, safetensors weights) never panic: arbitrary and
//! mutated inputs give a result or a typed error.

use hetensor::data::npy;
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

/// A valid `.npy` file's header text with a range of characters replaced by `text`.
fn npy_with_header_text(at: usize, text: &str) -> Vec<u8> {
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 3]), vec![1.5; 6]).unwrap();
    let bytes = npy::to_bytes(&a);
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let at = at % header.len();
    let end = (at + text.len()).min(header.len());
    let mut new_header = format!("{}{}{}", &header[..at], text, &header[end..]);
    new_header.truncate(u16::MAX as usize);
    let mut out = bytes[..8].to_vec();
    out.extend((new_header.len() as u16).to_le_bytes());
    out.extend(new_header.as_bytes());
    out.extend(&bytes[10 + header_len..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any f64 array up to 3 axes reads back as itself, bit for bit.
    #[test]
    fn npy_round_trips(shape in proptest::collection::vec(0usize..5, 0..4), seed in any::<u64>()) {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n as u64).map(|i| f64::from_bits(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .map(|x| if x.is_nan() { -0.0 } else { x })
            .collect();
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), v).unwrap();
        let back = npy::parse(&npy::to_bytes(&a)).unwrap();
        prop_assert_eq!(back.shape(), a.shape());
        prop_assert!(back.iter().zip(a.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    /// Untrusted `.npy` bytes parse or are refused with a message, never a panic: arbitrary
    /// bytes behind the magic, and header text with arbitrary characters spliced in (a shape
    /// of `)` or a multi-byte character once sliced the header inside a character).
    #[test]
    fn npy_untrusted_bytes_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        at in any::<usize>(),
        text in "[(),:' 0-9a-zA-Zé€<>|]{0,12}",
        cut in 0usize..200,
    ) {
        let mut raw = b"\x93NUMPY".to_vec();
        raw.extend(&tail);
        if let Err(e) = npy::parse(&raw) {
            prop_assert!(!e.is_empty());
        }
        let mut spliced = npy_with_header_text(at, &text);
        if let Ok(a) = npy::parse(&spliced) {
            // The 48 data bytes hold at most 48 one-byte elements.
            prop_assert!(a.len() <= 48, "{:?}", a.shape());
        }
        spliced.truncate(spliced.len().saturating_sub(cut));
        let _ = npy::parse(&spliced);
    }

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
            prop_assert!(
                matches!(e, Error::Model(_) | Error::MissingWeight { .. } | Error::WeightShape { .. }),
                "{e}"
            );
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

/// A gzip file holding `head` followed by `zeros` zero bytes, in a fresh temporary directory.
fn gz_file(name: &str, head: &[u8], zeros: u64) -> std::path::PathBuf {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("hetensor-parsers-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.gz"));
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).expect("create"),
        flate2::Compression::fast(),
    );
    enc.write_all(head).expect("gzip");
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).expect("gzip");
        left -= n as u64;
    }
    enc.finish().expect("gzip");
    path
}

fn idx_header(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x0000_0803u32, count, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v
}

fn data_error(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Data(m)) => m,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

/// A gzip bomb behind a valid header (10 images, then 1.1 GiB of zeros, 1 MB compressed):
/// decompression stops one byte past the 7,840 announced pixels, instead of inflating up to
/// the 1 GiB limit (which took 3.2 GB and 14 s before).
#[test]
fn gzip_bomb_behind_a_valid_header_stops_at_the_announced_size() {
    let path = gz_file("bomb", &idx_header(10, 28, 28), 1100 << 20);
    let m = data_error(mnist::load_images(&path));
    assert!(m.contains("trailing bytes after the 7840 announced"), "{m}");
    assert!(m.contains(&path.display().to_string()), "{m}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A header announcing more than the 1 GiB limit (10^9 images), or more than the file can
/// hold (a gzip stream of a few hundred bytes cannot inflate to 784 MB), is refused from the
/// header alone, naming the file.
#[test]
fn idx_headers_announcing_too_much_are_refused_before_reading() {
    let path = gz_file("huge", &idx_header(1_000_000_000, 28, 28), 1 << 20);
    let m = data_error(mnist::load_images(&path));
    assert!(m.contains("more than the 1073741824 bytes"), "{m}");
    assert!(m.contains(&path.display().to_string()), "{m}");
    let path = gz_file("short", &idx_header(1_000_000, 28, 28), 1000);
    let m = data_error(mnist::load_images(&path));
    assert!(m.contains("more than a gzip stream of"), "{m}");
    // The same header uncompressed: the file's length says it is truncated.
    let raw = path.with_extension("raw");
    std::fs::write(&raw, idx_header(1_000_000, 28, 28)).expect("write");
    let m = data_error(mnist::load_images(&raw));
    assert!(m.contains("need 784000000 bytes of data, found 0"), "{m}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// An IDX file with no images (or no labels) is an error naming the file.
#[test]
fn idx_files_without_data_are_errors_naming_the_file() {
    let path = gz_file("empty", &idx_header(0, 28, 28), 0);
    let m = data_error(mnist::load_images(&path));
    assert!(m.contains("holds no images"), "{m}");
    assert!(m.contains(&path.display().to_string()), "{m}");
    let labels = path.with_extension("labels");
    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 0]).expect("write");
    let m = data_error(mnist::load_labels(&labels));
    assert!(m.contains("holds no labels"), "{m}");
    assert!(m.contains(&labels.display().to_string()), "{m}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A weights file larger than any file the model's parameters can take is refused before it
/// is read (a sparse file: no disk is used), and so are such bytes.
#[test]
fn oversized_weights_files_are_refused_unread() {
    let mut m = Sequential::lenet1();
    let max = weights::max_file_bytes(&m);
    // LeNet-1's 3,246 parameters as F64 plus the header allowance.
    assert_eq!(max, 3_246 * 8 + (1 << 20));
    let dir = std::env::temp_dir().join(format!("hetensor-parsers-{}-st", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("big.safetensors");
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(64 << 30).expect("sparse file");
    match weights::load(&mut m, &path) {
        Err(Error::Model(msg)) => assert!(msg.contains("more than the"), "{msg}"),
        other => panic!("expected Error::Model, got {other:?}"),
    }
    let mut big = lenet_bytes();
    big.resize(max as usize + 1, b' ');
    match weights::load_from_bytes(&mut m, &big) {
        Err(Error::Model(msg)) => assert!(msg.contains("more than the"), "{msg}"),
        other => panic!("expected Error::Model, got {other:?}"),
    }
    // The real file still loads.
    weights::load_from_bytes(&mut m, &lenet_bytes()).expect("bundled weights");
    let _ = std::fs::remove_dir_all(&dir);
}
