using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// The dev overlay's Prometheus and Grafana: built from the same files as the AppHost's, wired to each other, finding
/// every service pod, and allowed to read nothing but pods.
/// </summary>
public class MonitoringTests
{
    private const string Dev = "overlays/dev";

    [Fact]
    public void Dev_monitoring_config_maps_hold_the_same_files_the_apphost_uses()
    {
        var rendered = Manifests.Render(Dev);
        var files = new (string ConfigMap, string Folder, string Pattern)[]
        {
            ("prometheus-config", "prometheus", "prometheus*.yml"),
            ("prometheus-rules", "prometheus/rules", "*.yml"),
            ("grafana-datasources", "grafana/provisioning/datasources", "*.yml"),
            ("grafana-dashboard-providers", "grafana/provisioning/dashboards", "*.yml"),
            ("grafana-dashboards", "grafana/dashboards", "*.json"),
        };

        foreach (var (configMap, folder, pattern) in files)
        {
            var data = rendered.ConfigMapData(GeneratedName(rendered, configMap));
            var onDisk = Directory.GetFiles(Repo.PathOf("infra", folder), pattern);
            Assert.NotEmpty(onDisk);
            Assert.Equal(onDisk.Select(Path.GetFileName).Order(StringComparer.Ordinal), data.Keys.Order(StringComparer.Ordinal));
            foreach (var file in onDisk)
            {
                Assert.True(File.ReadAllText(file) == data[Path.GetFileName(file)], $"{configMap}/{Path.GetFileName(file)} differs from infra/{folder}");
            }
        }
    }

    [Fact]
    public void Prometheus_runs_the_kubernetes_config_with_every_rule_file()
    {
        var rendered = Manifests.Render(Dev);
        var prometheus = rendered.Workload("prometheus");
        var files = MountedFiles(rendered, prometheus);

        var configPath = Arg(prometheus, "--config.file");
        Assert.EndsWith("/prometheus.k8s.yml", configPath);
        Assert.True(files.TryGetValue(configPath, out var config), $"{configPath} is not mounted");
        Assert.Equal(Repo.Read("infra", "prometheus", "prometheus.k8s.yml"), config);

        // rule_files globs are relative to the config file: each rule file of infra/prometheus/rules must match one.
        var configDir = configPath[..configPath.LastIndexOf('/')];
        var globs = Yaml.ParseDocuments(config!)[0]["rule_files"]!.AsArray().Select(g => configDir + "/" + (string)g!).ToList();
        foreach (var rule in Directory.GetFiles(Repo.PathOf("infra", "prometheus", "rules"), "*.yml"))
        {
            var loaded = files.Where(f => globs.Any(g => Glob(g).IsMatch(f.Key))).Select(f => f.Value).ToList();
            Assert.True(loaded.Contains(File.ReadAllText(rule)), $"rule file {Path.GetFileName(rule)} is not loaded by the config's rule_files");
        }

        // The TSDB is on the claim, not on the (read-only) root.
        Assert.Equal("/prometheus", Arg(prometheus, "--storage.tsdb.path"));
        Assert.Contains(prometheus.MainContainer["volumeMounts"]!.AsArray(), m => (string?)m!["mountPath"] == "/prometheus" &&
            prometheus.Object["spec"]!["volumeClaimTemplates"]!.AsArray().Any(c => (string?)c!["metadata"]!["name"] == (string?)m["name"]));
    }

    [Fact]
    public void Prometheus_kubernetes_config_passes_promtool()
    {
        // Debian's promtool is built without kubernetes_sd: swap it for a static target, check everything else
        // (relabel actions and regexes, rule files and their expressions) with the real parser.
        var config = Yaml.ParseDocuments(Repo.Read("infra", "prometheus", "prometheus.k8s.yml"))[0];
        foreach (var job in config["scrape_configs"]!.AsArray().Cast<JsonObject>())
        {
            Assert.NotNull(job["kubernetes_sd_configs"]);
            job.Remove("kubernetes_sd_configs");
            job["static_configs"] = JsonNode.Parse("""[{"targets":["placeholder:8080"]}]""");
        }

        var dir = Path.Combine(Path.GetTempPath(), "eventpipeline-promtool-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Path.Combine(dir, "rules"));
        try
        {
            foreach (var rule in Directory.GetFiles(Repo.PathOf("infra", "prometheus", "rules")))
            {
                File.Copy(rule, Path.Combine(dir, "rules", Path.GetFileName(rule)));
            }

            File.WriteAllText(Path.Combine(dir, "prometheus.yml"), config.ToJsonString()); // JSON is YAML
            var (code, stdout, stderr) = Repo.Run("promtool", dir, "check", "config", "prometheus.yml");
            Assert.True(code == 0, stdout + stderr);
            Assert.Contains("SUCCESS: 1 rule files found", stdout + stderr);

            // ...and the check can fail: a relabel regex RE2 refuses (a back-reference).
            config["scrape_configs"]![0]!["relabel_configs"]![0]!["regex"] = @"(\d+);\1";
            File.WriteAllText(Path.Combine(dir, "prometheus.yml"), config.ToJsonString());
            Assert.NotEqual(0, Repo.Run("promtool", dir, "check", "config", "prometheus.yml").ExitCode);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Kubernetes_discovery_finds_each_service_pod_on_its_metrics_port_and_nothing_else()
    {
        var rendered = Manifests.Render(Dev);
        var job = (JsonObject)Yaml.ParseDocuments(Repo.Read("infra", "prometheus", "prometheus.k8s.yml"))[0]["scrape_configs"]!.AsArray()
            .Single(j => (string?)j!["job_name"] == "eventpipeline")!;
        var sd = job["kubernetes_sd_configs"]!.AsArray().Single()!;
        Assert.Equal("pod", (string?)sd["role"]);
        Assert.Equal(["eventpipeline"], sd["namespaces"]!["names"]!.AsArray().Select(n => (string)n!));
        Assert.Equal("eventpipeline", (string?)rendered.Get("Namespace", "eventpipeline")["metadata"]!["name"]);

        // kubernetes_sd (role pod) yields one target per container port, with the pod's labels and annotations.
        var targets = new List<(string Service, string Address, string Path)>();
        var n = 10;
        foreach (var workload in rendered.Workloads)
        {
            var ip = $"10.244.0.{n++}";
            foreach (var (_, port, _) in workload.Ports)
            {
                var labels = new Dictionary<string, string>
                {
                    ["__address__"] = $"{ip}:{port}",
                    ["__metrics_path__"] = "/metrics",
                    ["__meta_kubernetes_pod_name"] = workload.Name + "-0",
                    ["__meta_kubernetes_pod_container_port_number"] = port.ToString(System.Globalization.CultureInfo.InvariantCulture),
                };
                foreach (var (k, v) in workload.PodLabels)
                {
                    labels["__meta_kubernetes_pod_label_" + Sanitize(k)] = v;
                }

                foreach (var (k, v) in workload.PodAnnotations)
                {
                    labels["__meta_kubernetes_pod_annotation_" + Sanitize(k)] = v;
                }

                if (Relabel(labels, job["relabel_configs"]!.AsArray()) is { } kept)
                {
                    targets.Add((kept.GetValueOrDefault("service", ""), kept["__address__"], kept["__metrics_path__"]));
                }
            }
        }

        var expected = new[] { "downstream-receiver", "producer-api", "worker-cpu", "worker-io" }
            .Select(name => (name, rendered.Workload(name)))
            .Select(x => (x.name, Port: x.Item2.Ports.Single(p => p.Name == "http").Port));
        Assert.Equal(expected.Select(e => (e.name, e.Port, DefaultsFacts.MetricsPath)).OrderBy(e => e.name, StringComparer.Ordinal),
            targets.Select(t => (t.Service, long.Parse(t.Address.Split(':')[1], System.Globalization.CultureInfo.InvariantCulture), t.Path)).OrderBy(t => t.Service, StringComparer.Ordinal));
    }

    [Fact]
    public void Prometheus_may_only_read_pods_of_its_namespace_and_is_the_only_pod_with_a_token()
    {
        var rendered = Manifests.Render(Dev);
        var prometheus = rendered.Workload("prometheus");
        var account = (string)prometheus.PodSpec["serviceAccountName"]!;
        Assert.NotNull(rendered.Find("ServiceAccount", account));
        Assert.True((bool?)prometheus.PodSpec["automountServiceAccountToken"]);

        var bindings = rendered.OfKind("RoleBinding").Where(b => b["subjects"]!.AsArray().Any(s =>
            (string?)s!["kind"] == "ServiceAccount" && (string?)s["name"] == account && (string?)s["namespace"] == "eventpipeline")).ToList();
        var binding = Assert.Single(bindings);
        Assert.Equal("Role", (string?)binding["roleRef"]!["kind"]);
        var role = rendered.Get("Role", (string)binding["roleRef"]!["name"]!);
        var rule = Assert.Single(role["rules"]!.AsArray())!;
        Assert.Equal([""], rule["apiGroups"]!.AsArray().Select(g => (string)g!));
        Assert.Equal(["pods"], rule["resources"]!.AsArray().Select(r => (string)r!));
        Assert.Equal(["get", "list", "watch"], rule["verbs"]!.AsArray().Select(v => (string)v!).Order(StringComparer.Ordinal));
        Assert.Empty(rendered.OfKind("ClusterRole"));
        Assert.Empty(rendered.OfKind("ClusterRoleBinding"));

        Assert.Equal(["prometheus"], rendered.Workloads.Where(w => (bool?)w.PodSpec["automountServiceAccountToken"] != false).Select(w => w.Name));
    }

    [Fact]
    public void Grafana_loads_the_shared_provisioning_and_dashboards_and_queries_the_dev_prometheus()
    {
        var rendered = Manifests.Render(Dev);
        var grafana = rendered.Workload("grafana");
        var files = MountedFiles(rendered, grafana);
        var env = rendered.EnvironmentOf(grafana, grafana.MainContainer);

        Assert.Equal(Repo.Read("infra", "grafana", "provisioning", "datasources", "prometheus.yml"), files["/etc/grafana/provisioning/datasources/prometheus.yml"]);
        var provider = Yaml.ParseDocuments(files["/etc/grafana/provisioning/dashboards/eventpipeline.yml"])[0];
        var dashboardsPath = (string)provider["providers"]![0]!["options"]!["path"]!;
        foreach (var dashboard in Directory.GetFiles(Repo.PathOf("infra", "grafana", "dashboards"), "*.json"))
        {
            Assert.Equal(File.ReadAllText(dashboard), files[dashboardsPath + "/" + Path.GetFileName(dashboard)]);
        }

        Assert.True(files.ContainsKey(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]), "the home dashboard is not mounted");

        // ${PROMETHEUS_URL} in the datasource names the prometheus Service and its port.
        Assert.Contains("${PROMETHEUS_URL}", files["/etc/grafana/provisioning/datasources/prometheus.yml"]);
        var url = new Uri(env["PROMETHEUS_URL"]);
        var service = rendered.Get("Service", url.Host);
        Assert.Contains(service["spec"]!["ports"]!.AsArray(), p => (long)p!["port"]! == url.Port);
        Assert.Equal("prometheus", Rendered.StringMap(service["spec"]!["selector"])["app.kubernetes.io/name"]);
        Assert.Equal(env["GF_SECURITY_ADMIN_PASSWORD"], rendered.SecretData(GeneratedName(rendered, "eventpipeline-secrets", "Secret"))["grafana-admin-password"]);
    }

    [Fact]
    public void Prometheus_and_grafana_are_dev_only()
    {
        var prod = Manifests.Render("overlays/prod");
        Assert.DoesNotContain(prod.Workloads, w => w.Name is "prometheus" or "grafana");
        Assert.DoesNotContain(prod.OfKind("Role"), _ => true);
        Assert.Contains(Manifests.Render(Dev).Workloads, w => w.Name == "grafana");
    }

    [Fact]
    public void The_relabel_simulation_can_drop_a_target()
    {
        // The discovery check can fail: a pod without the scrape annotation, or with another port, yields no target.
        var rules = Yaml.ParseDocuments(Repo.Read("infra", "prometheus", "prometheus.k8s.yml"))[0]["scrape_configs"]![0]!["relabel_configs"]!.AsArray();
        var labels = new Dictionary<string, string>
        {
            ["__address__"] = "10.0.0.1:8080", ["__metrics_path__"] = "/metrics",
            ["__meta_kubernetes_pod_container_port_number"] = "8080",
            ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] = "true",
            ["__meta_kubernetes_pod_annotation_prometheus_io_port"] = "8080",
        };
        Assert.NotNull(Relabel(new(labels), rules));
        Assert.Null(Relabel(new(labels) { ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] = "false" }, rules));
        Assert.Null(Relabel(new(labels) { ["__meta_kubernetes_pod_container_port_number"] = "9090" }, rules));
    }

    [Fact]
    public void The_readme_port_forwards_to_ports_the_dev_services_expose()
    {
        var rendered = Manifests.Render(Dev);
        var forwards = Regex.Matches(Repo.Read("infra", "k8s", "README.md"), @"port-forward svc/([\w-]+) \d+:(\d+)").ToList();
        Assert.Contains(forwards, m => m.Groups[1].Value == "grafana");
        Assert.Contains(forwards, m => m.Groups[1].Value == "prometheus");
        foreach (var m in forwards)
        {
            var service = rendered.Get("Service", m.Groups[1].Value);
            Assert.Contains(service["spec"]!["ports"]!.AsArray(), p => (long)p!["port"]! == long.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
        }
    }

    /// <summary>The name kustomize generated (hash suffix) for a generator's base name.</summary>
    private static string GeneratedName(Rendered rendered, string baseName, string kind = "ConfigMap") =>
        rendered.OfKind(kind).Select(Rendered.Name).Single(n => Regex.IsMatch(n, "^" + Regex.Escape(baseName) + "-[a-z0-9]{10}$"));

    private static string Arg(Workload workload, string flag) =>
        workload.MainContainer["args"]!.AsArray().Select(a => (string)a!).Single(a => a.StartsWith(flag + "=", StringComparison.Ordinal))[(flag.Length + 1)..];

    /// <summary>Path in the container → content, for every ConfigMap-backed file the main container mounts.</summary>
    private static Dictionary<string, string> MountedFiles(Rendered rendered, Workload workload)
    {
        var volumes = workload.PodSpec["volumes"]!.AsArray().Cast<JsonObject>().ToDictionary(v => (string)v["name"]!);
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var mount in workload.MainContainer["volumeMounts"]!.AsArray().Cast<JsonObject>())
        {
            if (!volumes.TryGetValue((string)mount["name"]!, out var volume))
            {
                continue; // a volumeClaimTemplate
            }

            List<JsonObject> sources = volume["configMap"] is JsonObject single
                ? [single]
                : volume["projected"]?["sources"]?.AsArray().Select(s => s!["configMap"]).OfType<JsonObject>().ToList() ?? [];
            foreach (var source in sources)
            {
                var data = rendered.ConfigMapData((string)source["name"]!);
                var items = source["items"]?.AsArray().Cast<JsonObject>().Select(i => ((string)i["key"]!, (string)i["path"]!)).ToList()
                            ?? data.Keys.Select(k => (k, k)).ToList();
                foreach (var (key, path) in items)
                {
                    files[(string)mount["mountPath"]! + "/" + path] = data[key];
                }
            }
        }

        return files;
    }

    private static Regex Glob(string pattern) => new("^" + Regex.Escape(pattern).Replace(@"\*", "[^/]*", StringComparison.Ordinal) + "$");

    private static string Sanitize(string name) => Regex.Replace(name, "[^a-zA-Z0-9_]", "_");

    /// <summary>
    /// Prometheus relabelling for the actions the config uses (keep, drop, keepequal, replace); null = target dropped.
    /// Regexes are anchored as Prometheus anchors them; $1-style references as in its replacement strings.
    /// </summary>
    private static Dictionary<string, string>? Relabel(Dictionary<string, string> labels, JsonArray rules)
    {
        foreach (var rule in rules.Cast<JsonObject>())
        {
            var separator = (string?)rule["separator"] ?? ";";
            var value = string.Join(separator, (rule["source_labels"]?.AsArray() ?? []).Select(l => labels.GetValueOrDefault((string)l!, "")));
            var regex = new Regex("^(?:" + ((string?)rule["regex"] ?? "(.*)") + ")$");
            var action = (string?)rule["action"] ?? "replace";
            switch (action)
            {
                case "keep" when !regex.IsMatch(value):
                case "drop" when regex.IsMatch(value):
                case "keepequal" when value != labels.GetValueOrDefault((string)rule["target_label"]!, ""):
                    return null;
                case "keep" or "drop" or "keepequal":
                    break;
                case "replace":
                    var match = regex.Match(value);
                    if (match.Success)
                    {
                        var replacement = Regex.Replace((string?)rule["replacement"] ?? "$1", @"\$\{?(\d+)\}?", m => match.Groups[int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)].Value);
                        var target = (string)rule["target_label"]!;
                        if (replacement.Length == 0)
                        {
                            labels.Remove(target);
                        }
                        else
                        {
                            labels[target] = replacement;
                        }
                    }

                    break;
                default:
                    throw new NotSupportedException($"relabel action {action}: teach the simulation first");
            }
        }

        return labels;
    }
}
