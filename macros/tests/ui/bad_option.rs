clocher_macros::model!("tiny.ie.json", embed_everything);

fn main() {}
