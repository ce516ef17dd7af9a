//! Transfer learning on encrypted CNN features (see the module docs of [`super`]).
