from dino_pipe.cli import main

main()
