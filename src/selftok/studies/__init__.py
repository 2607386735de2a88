"""Studies: measurements repeated over seeds, recipes or val scenes, beside the pipeline.

Each module is one `selftok study` command (selftok.commands.study): ``rl_seeds`` (an RL recipe
over several RL seeds), ``sampling`` (a VLM under other sampling recipes), ``tokenizer`` (a
trained tokenizer scored on fixed val scenes). ``benchmark`` is the generation benchmark they
share, the evaluate stage's own. They read a project the pipeline has built and never change it.
"""
