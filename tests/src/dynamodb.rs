//! dynamodb fixtures: servers and ready stores (being written).
