from atendeai_ctl.cli.main import main

main()
