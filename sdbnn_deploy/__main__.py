from sdbnn_deploy.cli import main

main()
