//! PLACEHOLDER: the vectorised exp lands here.
