clocher_macros::model!("no_such_model.ie.json");

fn main() {}
