"""The autoregressive vision-language model: one Llama over text and Selftok visual tokens.

Text is BPE-tokenised (trained on the captions); each code of the Selftok codebook is one more
token ``<v_i>``, so one embedding table and one output head serve both modalities and a plain
next-token loss trains text->image, image->text, image-only and text-only sequences.
"""
