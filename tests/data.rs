//! Titanic and credit-approval loaders: the bundled files parse to the documented features,
//! splits are deterministic, and arbitrary or mutated bytes give a data set or a typed
//! `Error::Data`, never a panic.

use hetensor::data::{credit, titanic, DEFAULT_CREDIT, DEFAULT_TITANIC};
use hetensor::Error;
use proptest::prelude::*;

#[test]
fn titanic_loads_with_documented_features() {
    let d = titanic::load(DEFAULT_TITANIC).expect("bundled titanic");
    assert_eq!(d.len(), 891);
    assert_eq!(d.feature_names, titanic::FEATURES.to_vec());
    assert_eq!(d.labels.iter().filter(|&&l| l == 1).count(), 342);
    // Standardized numeric columns: mean 0, variance 1.
    for j in [3, 4, 5, 6] {
        let c = d.features.column(j);
        let mean = c.sum() / c.len() as f64;
        let var = c.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c.len() as f64;
        assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-9, "column {j}");
    }
    // Indicators: 314 women, 216 first class.
    assert_eq!(d.features.column(0).sum(), 314.0);
    assert_eq!(d.features.column(1).sum(), 216.0);
    // Titles (Mr = none of them: 517): Master, Miss/Mlle/Ms, Mrs/Mme, the rest; each row has
    // at most one.
    let titles: Vec<f64> = (9..13).map(|j| d.features.column(j).sum()).collect();
    assert_eq!(titles, [40.0, 185.0, 126.0, 23.0]);
    assert!(d
        .features
        .rows()
        .into_iter()
        .all(|r| r.iter().skip(9).sum::<f64>() <= 1.0));
}

#[test]
fn credit_loads_and_drops_missing_rows() {
    let d = credit::load(DEFAULT_CREDIT).expect("bundled crx");
    assert_eq!(d.len(), 654);
    assert_eq!(d.num_features(), 42);
    assert!(!d.feature_names.contains(&"a4_t".to_string()));
    assert!(d.feature_names.contains(&"a15".to_string()));
    let pos = d.labels.iter().filter(|&&l| l == 1).count();
    assert_eq!(pos, 297);
    assert!(d.features.iter().all(|v| v.is_finite() && v.abs() < 10.0));
}

#[test]
fn split_is_deterministic_and_disjoint() {
    let d = titanic::load(DEFAULT_TITANIC).expect("titanic");
    let (a, b) = d.split(0.2, 7).expect("split");
    let (a2, b2) = d.split(0.2, 7).expect("split");
    assert_eq!(a, a2);
    assert_eq!(b, b2);
    assert_eq!(b.len(), 178);
    assert_eq!(a.len() + b.len(), d.len());
    let (_, b3) = d.split(0.2, 8).expect("split");
    assert_ne!(b, b3);
    assert!(d.split(1.0, 0).is_err());
    let shards = d.shards(3).expect("shards");
    assert_eq!(shards.iter().map(|s| s.len()).sum::<usize>(), d.len());
    assert!(d.shards(0).is_err());
}

#[test]
fn malformed_files_are_data_errors() {
    let bad: [&[u8]; 6] = [
        b"",
        b"PassengerId,Survived\n1,0\n",
        b"PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n1,2,3,\"x\",male,22,1,0,t,7.25,,S\n",
        b"PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n1,0,3,\"x,male,22,1,0,t,7.25,,S\n",
        b"PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n1,0,3,x,male,abc,1,0,t,7.25,,S\n",
        b"PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n1,0,3,x,male,NaN,1,0,t,7.25,,S\n",
    ];
    for b in bad {
        assert!(
            matches!(titanic::parse(b), Err(Error::Data(_))),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    let bad_crx: [&[u8]; 4] = [
        b"",
        b"b,30.83,0,u,g,w,v,1.25,t,t,01,f,g,00202,0\n",
        b"b,30.83,0,u,g,w,v,1.25,t,t,01,f,g,00202,0,*\n",
        b"z,30.83,0,u,g,w,v,1.25,t,t,01,f,g,00202,0,+\n",
    ];
    for b in bad_crx {
        assert!(
            matches!(credit::parse(b), Err(Error::Data(_))),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    assert!(matches!(
        titanic::load("/nonexistent/titanic.csv"),
        Err(Error::Data(_))
    ));
}

fn titanic_bytes() -> Vec<u8> {
    std::fs::read(DEFAULT_TITANIC).expect("titanic")[..4000].to_vec()
}

fn credit_bytes() -> Vec<u8> {
    std::fs::read(DEFAULT_CREDIT).expect("crx")[..3000].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for r in [titanic::parse(&bytes), credit::parse(&bytes)] {
            if let Err(e) = r {
                prop_assert!(matches!(e, Error::Data(_)), "{e}");
            }
        }
    }

    #[test]
    fn mutated_titanic_parses_or_errors(pos in any::<usize>(), byte in any::<u8>(), cut in 0usize..4000) {
        let mut v = titanic_bytes();
        let p = pos % v.len();
        v[p] = byte;
        v.truncate(v.len() - cut.min(v.len()));
        match titanic::parse(&v) {
            Ok(d) => prop_assert!(d.features.iter().all(|x| x.is_finite())),
            Err(e) => prop_assert!(matches!(e, Error::Data(_)), "{e}"),
        }
    }

    #[test]
    fn mutated_credit_parses_or_errors(pos in any::<usize>(), byte in any::<u8>(), cut in 0usize..3000) {
        let mut v = credit_bytes();
        let p = pos % v.len();
        v[p] = byte;
        v.truncate(v.len() - cut.min(v.len()));
        match credit::parse(&v) {
            Ok(d) => prop_assert!(d.features.iter().all(|x| x.is_finite())),
            Err(e) => prop_assert!(matches!(e, Error::Data(_)), "{e}"),
        }
    }
}

/// The CSV loaders bound what a file can make them hold: a file over 64 MiB is refused before
/// it is read (a sparse file: no disk is used), a record of more than 256 fields or a file of
/// more than 4 M fields in all is an error while parsing, not gigabytes of `String`s.
#[test]
fn oversized_csv_input_is_refused() {
    use hetensor::data::{MAX_CSV_BYTES, MAX_CSV_CELLS, MAX_CSV_FIELDS};
    let dir = std::env::temp_dir().join(format!("hetensor-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("big.csv");
    std::fs::File::create(&path)
        .expect("create")
        .set_len(MAX_CSV_BYTES + 1)
        .expect("sparse file");
    for r in [titanic::load(&path), credit::load(&path)] {
        match r {
            Err(Error::Data(m)) => assert!(m.contains("larger than"), "{m}"),
            other => panic!("expected Error::Data, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let wide = ",".repeat(MAX_CSV_FIELDS);
    for r in [
        titanic::parse(wide.as_bytes()),
        credit::parse(wide.as_bytes()),
    ] {
        match r {
            Err(Error::Data(m)) => assert!(m.contains("fields in one record"), "{m}"),
            other => panic!("expected Error::Data, got {other:?}"),
        }
    }
    // 4 M + 2 one-byte fields, two per line (8 MB).
    let many = "a,b\n".repeat(MAX_CSV_CELLS / 2 + 1);
    for r in [
        titanic::parse(many.as_bytes()),
        credit::parse(many.as_bytes()),
    ] {
        match r {
            Err(Error::Data(m)) => assert!(m.contains("fields in the file"), "{m}"),
            other => panic!("expected Error::Data, got {other:?}"),
        }
    }
}
