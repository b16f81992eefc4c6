from atendeai_ctl.cli.app import main

main()
