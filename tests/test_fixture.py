def test_tiny_tokenizer_is_fast_and_gives_offsets(tiny_tokenizer):
    enc = tiny_tokenizer("chmod changes the file mode bits", add_special_tokens=False, return_offsets_mapping=True)
    assert tiny_tokenizer.is_fast
    assert len(enc["input_ids"]) == len(enc["offset_mapping"]) > 0
