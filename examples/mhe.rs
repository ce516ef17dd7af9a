//! Three parties, no key holder: collective keys, an encrypted product and rotation, and a
//! decryption to party 0 with 40-bit smudging. `cargo run --release --example mhe`
use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
use hetensor::math::sampler::Sampler;
use hetensor::mhe::{self, Crs, Party, Share};
use hetensor::rlwe::keys::galois_element_for_step;

fn main() -> hetensor::Result<()> {
    let bfv = BfvContext::new(BfvParams::preset(13, PlainModulus::Bits(20))?)?;
    let ctx = bfv.rlwe().clone();
    let crs = Crs::new(Sampler::from_os().seed()); // public: published by anyone
    let mut parties = (0..3)
        .map(|_| Party::new(ctx.clone(), crs, Sampler::from_os()))
        .collect::<hetensor::Result<Vec<Party>>>()?;
    let sum = |shares: hetensor::Result<Vec<Share>>| mhe::aggregate(&ctx, &shares?);

    // Key generation: every party sends shares, anyone adds them up.
    let pk = mhe::ckg_finalize(
        &ctx,
        &crs,
        &sum(parties.iter_mut().map(|p| p.ckg_share()).collect())?,
    )?;
    let r1 = sum(parties.iter_mut().map(|p| p.rkg_round1()).collect())?;
    let r2 = sum(parties.iter_mut().map(|p| p.rkg_round2(&r1)).collect())?;
    let rk = mhe::rkg_finalize(&ctx, &r1, &r2)?;
    let g = galois_element_for_step(ctx.n(), 1);
    let gk = mhe::rtg_finalize(
        &ctx,
        &crs,
        &[sum(parties.iter_mut().map(|p| p.rtg_share(g)).collect())?],
    )?;

    // Anyone encrypts and computes with the collective keys, exactly as with single-party keys.
    let a = bfv.encrypt(&bfv.encode(&[1, 2, 3, 4])?, &pk)?;
    let b = bfv.encrypt(&bfv.encode(&[5, 6, 7, 8])?, &pk)?;
    let c = bfv.rotate_rows(&bfv.multiply_relin(&a, &b, &rk)?, 1, &gk)?;

    // Decryption to party 0: the others send smudged shares (λ = 40 from c's noise bound).
    let smudging = mhe::bfv_smudging(&bfv, &c, 40, parties.len())?;
    let others = sum(parties[1..]
        .iter_mut()
        .map(|p| p.cks_share(c.inner(), None, &smudging, 1))
        .collect())?;
    let phase = parties[0].decrypt_with(c.inner(), &others)?;
    let out = bfv.decode(&bfv.decode_phase(&phase)?)?;
    assert_eq!(&out[..3], &[12, 21, 32]);
    println!(
        "party 0 decrypted {:?} (smudging 2^{})",
        &out[..3],
        smudging.bound_bits()
    );
    Ok(())
}
