"""The `selftok` command's subcommand groups, above the stages: each module holds the commands
of one part of the pipeline, and selftok.cli mounts them on the app."""
