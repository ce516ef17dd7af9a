//! Bootstrapping at an insecure test ring (the README's example): a level-0 ciphertext comes
//! back at a high level with the same slots. `BootstrapParams::n16()` is the 128-bit preset.
//!
//! cargo run --release --example bootstrap

use hetensor::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
use hetensor::ckks::{precision_bits, CkksContext};

fn main() -> hetensor::Result<()> {
    // Tests only: not secure. BootstrapParams::n16() is the 128-bit preset.
    let bp = BootstrapParams::insecure_test_ring(10, 2)?;
    let ctx = CkksContext::new(bp.ckks().clone())?;
    let keys = ctx.keygen()?;
    let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin)?;
    let x: Vec<f64> = (0..ctx.slots()).map(|i| (i as f64 * 0.1).sin()).collect();
    let ct = ctx.encrypt(&ctx.encode(&x, ctx.natural_scale(0), 0)?, &keys.public)?; // level 0
    let fresh = ctx.bootstrap(&ct, &bk)?;
    assert_eq!(fresh.level(), bk.output_level());
    let bits = precision_bits(&x, &ctx.decrypt_decode(&fresh, &keys.secret)?);
    assert!(bits > 18.0);
    println!(
        "level 0 → level {} with {bits:.1} bits of precision",
        fresh.level()
    );
    Ok(())
}
