"""The judge as a reward for trainers we do not own (DESIGN.md, "The judge (one unit, one API)").

    trl.py                    a TRL `reward_funcs` entry: direct scores, pairwise rounds in each group,
                              against a reference column; sync or async
    server.py                 `rlaif serve-reward`: HTTP routes (OpenRLHF's /get_reward, /score,
                              /compare, /group, /health) over one Judge, requests gathered into batches
    openrlhf.py               OpenRLHF's query (prompt + response in one decoded string) split back
                              into a prompt and a reply
    openrlhf_reward_func.py   a file for OpenRLHF's `--reward.remote_url FILE.py` (in-process judge)
    verl.py                   verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`
    common.py                 the judge named by environment variables; a background event loop
    cli.py                    the `serve-reward` command

Everything here talks to the judge through `rlaif.judge` (the package) only.
"""
