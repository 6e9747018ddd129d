// q_proj has 6 rows, but the config says num_attention_heads x head_dim = 2 x 4 = 8.
clocher_macros::model!("bad_q_proj.ie.json");

fn main() {}
